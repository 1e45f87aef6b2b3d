"""Hostile upstream input: the mapper never crashes, every acted-on record is either
submitted (per the dedupe rule) or rejected, and malformed Singer lines stop it cleanly."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tap_gtmcli.sandbox import SandboxServer
from tests.helpers.key_scan import assert_no_key
from tests.helpers.mapper_runs import (
    LEDGER,
    REJECTED,
    mapper_settings,
    run_mapper_cli,
    run_mapper_in_process,
)
from tests.helpers.sandboxes import (
    fast_sandbox,
    job_ids,
    received_items,
    received_jobs,
    sandbox_jobs,
)
from tests.helpers.singer import singer_text
from tests.helpers.submit_oracle import (
    contacts_input,
    mapper_truth,
    oracle_item,
    replay_after,
    state_position,
)

MB = 1024 * 1024


@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[SandboxServer]:
    with fast_sandbox() as server:
        yield server


def new_jobs(server: SandboxServer, before: set[str]) -> list[tuple[str, tuple]]:
    return received_jobs(server, skip=before)


# --------------------------------------------------------------------- strategies

EMAILS = ["ada@acme.io", " ADA@Acme.io ", "grace@navy.mil", "\tgrace@NAVY.mil\n",
          "élodie@exämple.fr", "İstanbul@örnek.tr", "用户@例子.中国", "x", "@", "😀@😀.io"]
NAMES = ["ada", "Ada ", "grace", "GRACE", "Ωmega", "  ", "", "ß", "名"]
DOMAINS = ["acme.io", "ACME.io", "navy.mil", "例子.中国", " ", "x"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
)
nested = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)


def field_values(pool: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(pool), st.sampled_from(pool), nested)


records = st.one_of(
    st.fixed_dictionaries({}, optional={
        "id": st.integers(0, 50),
        "email": field_values(EMAILS),
        "first_name": field_values(NAMES),
        "last_name": field_values(NAMES),
        "domain": field_values(DOMAINS),
        "notes": nested,
        "nested": st.dictionaries(st.text(max_size=4), nested, max_size=3),
    }),
    st.lists(scalars, max_size=3), st.text(max_size=5), st.integers(), st.none(),
)
streams = st.sampled_from(["contacts", "contacts_eu", "accounts"])
record_messages = st.builds(lambda s, r: {"type": "RECORD", "stream": s, "record": r},
                            streams, records)
schema_messages = st.builds(
    lambda s: {"type": "SCHEMA", "stream": s, "key_properties": [],
               "schema": {"type": "object", "properties": {"email": {"type": ["string", "null"]}}}},
    streams)
state_messages = st.builds(lambda n: {"type": "STATE", "value": {"bookmarks": {"n": n}}},
                           st.integers(0, 10**6))
message_lists = st.lists(
    st.one_of(record_messages, record_messages, record_messages, schema_messages, state_messages),
    max_size=40,
).map(lambda ms: ms + ms[: len(ms) // 2])  # duplicated records (and messages)


def check_run(server: SandboxServer, messages: list[dict], config: dict, before: set[str],
              patterns: tuple[str, ...]) -> None:
    run = run_mapper_in_process(config, messages)
    assert run.ok, f"the mapper crashed: {run.error!r}"
    assert_no_key(run.messages, run.log)
    truth = mapper_truth(messages, config["batch_size"], patterns)

    # Every non-STATE message passes through unchanged, in order.
    upstream = [m for m in run.messages
                if m.get("stream") not in (LEDGER, REJECTED) and m["type"] != "STATE"]
    assert upstream == [m for m in messages if m["type"] != "STATE"]
    # STATE: a subsequence of the input's, ending with its last one.
    input_states = [m["value"] for m in messages if m["type"] == "STATE"]
    if input_states:
        assert run.states and run.states[-1] == input_states[-1]
        remaining = iter(input_states)
        assert all(any(value == s for s in remaining) for value in run.states)
    else:
        assert run.states == []

    # The sandbox received exactly the oracle's jobs; the rest were rejected.
    jobs = new_jobs(server, before)
    assert sorted(jobs) == sorted(truth.jobs)
    rejected = run.records(REJECTED)
    assert len(rejected) == truth.rejected
    submitted_records = truth.acted_on - len(rejected)
    assert submitted_records == truth.submittable
    distinct_per_job = sum(len(items) for _, items in jobs)
    assert distinct_per_job <= submitted_records
    assert sum(row["item_count"] for row in run.records(LEDGER)) == distinct_per_job
    for row in rejected:
        assert row["reason"]
        assert oracle_item(json.loads(row["record"])) is None


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(messages=message_lists, batch_size=st.integers(1, 4),
       patterns=st.sampled_from([("*",), ("contacts*",), ("contacts",)]))
def test_arbitrary_records_never_crash_and_every_record_is_submitted_or_rejected(
    shared_sandbox, messages, batch_size, patterns
):
    before = job_ids(shared_sandbox)
    # The oracle is the batching rule of one fresh run: the submission index (which would
    # skip repeats across batches and across examples) is tested in tests/mapper.
    config = mapper_settings(shared_sandbox, batch_size=batch_size, streams=list(patterns),
                             resubmit_after_days=0)
    check_run(shared_sandbox, messages, config, before, patterns)


@pytest.mark.parametrize(
    "record",
    [
        {"id": 1, "email": "big@acme.io", "notes": "n" * MB},
        {"id": 2, "email": "big@acme.io", "nested": {"deep": [{"x": "é" * (MB // 2)}]}},
        {"id": 3, "email": "a" * MB + "@acme.io"},
        {"id": 4, "first_name": "ß" * MB, "last_name": "x", "domain": "acme.io"},
    ],
    ids=["1mb-unmapped", "1mb-nested-unicode", "1mb-email", "1mb-first-name"],
)
def test_one_megabyte_fields(shared_sandbox, record):
    messages = [{"type": "SCHEMA", "stream": "contacts", "key_properties": [],
                 "schema": {"type": "object"}},
                {"type": "RECORD", "stream": "contacts", "record": record},
                {"type": "RECORD", "stream": "contacts", "record": record},
                {"type": "STATE", "value": {"done": True}}]
    before = job_ids(shared_sandbox)
    check_run(shared_sandbox, messages, mapper_settings(shared_sandbox, batch_size=10), before,
              ("*",))


def test_streams_with_no_records_and_schemas_after_records(shared_sandbox):
    messages = [
        {"type": "RECORD", "stream": "contacts", "record": {"email": "early@acme.io"}},
        {"type": "SCHEMA", "stream": "empty", "key_properties": [], "schema": {"type": "object"}},
        {"type": "STATE", "value": {"n": 1}},
        {"type": "SCHEMA", "stream": "contacts", "key_properties": [], "schema": {}},
        {"type": "SCHEMA", "stream": "contacts", "key_properties": [], "schema": {}},
        {"type": "ACTIVATE_VERSION", "stream": "empty", "version": 1},
        {"type": "RECORD", "stream": "contacts", "record": {"email": "EARLY@acme.io"}},
        {"type": "STATE", "value": {"n": 2}},
    ]
    before = job_ids(shared_sandbox)
    check_run(shared_sandbox, messages, mapper_settings(shared_sandbox, batch_size=5), before,
              ("*",))


def test_100001_items_make_two_jobs_of_100000_and_1(shared_sandbox):
    count = 100_001
    messages = [{"type": "SCHEMA", "stream": "contacts", "key_properties": ["id"],
                 "schema": {"type": "object"}}]
    messages += [{"type": "RECORD", "stream": "contacts",
                  "record": {"id": n, "email": f"user{n}@bulk.example.com"}} for n in range(count)]
    messages.append({"type": "STATE", "value": {"position": count}})
    before = job_ids(shared_sandbox)
    config = mapper_settings(shared_sandbox, request_timeout=60)  # default batch_size
    run = run_mapper_in_process(config, messages)
    assert run.ok, repr(run.error)
    new = [job for job in reversed(sandbox_jobs(shared_sandbox)) if job["id"] not in before]
    assert sorted(job["total"] for job in new) == [1, 100_000]
    received = Counter(received_items(shared_sandbox, [job["id"] for job in new]))
    assert len(received) == count and set(received.values()) == {1}
    assert [row["item_count"] for row in run.records(LEDGER)] == [100_000, 1]
    assert run.states == [{"position": count}]
    assert len(run.records("contacts")) == count


# --------------------------------------------------------------------- malformed lines


@pytest.mark.parametrize(
    "bad_line",
    [
        "this is not JSON {",
        '["a", "JSON", "array"]',
        '{"no_type": true}',
        '{"type": "RECORD", "record": {"id": 999, "email": "nostream@acme.io"}}',
        '{"type": "NOT_A_MESSAGE", "stream": "contacts"}',
        '{"type": "RECORD", "stream": "contacts", "record": {"id": 998, "email": "cut',
    ],
    ids=["not-json", "json-array", "no-type", "record-without-stream", "unknown-type",
         "truncated-line"],
)
def test_malformed_line_stops_naming_its_number_and_rerun_is_exact(
    shared_sandbox, bad_line, tmp_path
):
    messages = contacts_input(12, 4)  # SCHEMA, then records with a STATE every 4
    # Batch size 4: when the bad line comes (after record 10), the batch of records 9 and
    # 10 is open and no STATE covers it.
    cut = next(i for i, m in enumerate(messages) if m.get("record", {}).get("id") == 10) + 1
    lines = singer_text(messages).splitlines()
    bad_number = cut + 1
    text = "\n".join([*lines[:cut], bad_line, *lines[cut:]]) + "\n"
    before = job_ids(shared_sandbox)
    config = mapper_settings(shared_sandbox, batch_size=4)
    first = run_mapper_cli(config, text.encode(), tmp_path)
    assert first.returncode != 0
    assert re.search(rf"\bline {bad_number}\b", first.stderr, re.IGNORECASE), first.stderr[-2000:]
    assert "Traceback" not in first.stderr, first.stderr[-3000:]
    # Nothing after the bad line went downstream; the last STATE covers only submitted items.
    assert all(m["record"]["id"] <= 10 for m in first.of("contacts"))
    position = state_position(first.last_state)
    assert position <= 8
    submitted = Counter(received_items(shared_sandbox, job_ids(shared_sandbox) - before))
    covered = {oracle_item(m["record"]) for m in messages
               if m["type"] == "RECORD" and m["record"]["id"] <= position}
    assert covered <= set(submitted)
    # The rerun (upstream fixed, resumed from that STATE) completes with every item.
    rerun = run_mapper_cli(config, replay_after(messages, first.last_state), tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    received = Counter(received_items(shared_sandbox, job_ids(shared_sandbox) - before))
    truth = mapper_truth(messages, 4).items
    assert set(received) == set(truth)
    assert received == truth, f"submitted twice: {received - truth}"
