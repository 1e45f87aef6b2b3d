"""Submit mode: passthrough, batching, STATE, rejects, reconcile (against the sandbox, its
creates scripted to fail where a test needs them to)."""

from __future__ import annotations

import hashlib
import json

import pytest
from singer_sdk.singerlib.exceptions import InvalidInputLine

from tap_gtmcli.api.errors import SubmissionFailedError
from tap_gtmcli.sandbox import SandboxServer
from tap_gtmcli.submit.state_hold import StateHold
from tap_gtmcli.submit.submitter import LEDGER_STREAM, REJECTED_STREAM
from tests.helpers.mapper_runs import mapper_settings, run_mapper
from tests.helpers.sandboxes import creates_seen, sandbox_jobs, script_creates
from tests.helpers.singer import of_stream, record, schema, state


def sent(server: SandboxServer) -> list[tuple[str, list[dict]]]:
    """(type, items exactly as submitted) of every job the sandbox received, oldest first."""
    return [(job["type"], server.job_items(job["id"])) for job in sandbox_jobs(server)]


def test_passthrough_is_unchanged_and_state_waits_for_the_batch(sandbox: SandboxServer) -> None:
    messages = [
        schema(),
        record(id=1, email="A@Example.com "),
        state(1),
        record(id=2, email="b@example.com"),
        state(2),
        record(id=3, email="c@example.com"),
        state(3),
    ]
    out = run_mapper(mapper_settings(sandbox, batch_size=2), messages)

    ledger = of_stream(out, LEDGER_STREAM)
    assert [(m["type"], m.get("stream"), m.get("record", m.get("value"))) for m in out] == [
        ("SCHEMA", "contacts", None),
        ("RECORD", "contacts", messages[1]["record"]),
        ("RECORD", "contacts", messages[3]["record"]),  # fills the batch: job 1 is submitted
        ("SCHEMA", LEDGER_STREAM, None),
        ("RECORD", LEDGER_STREAM, ledger[0]["record"]),
        ("STATE", None, state(1)["value"]),  # released once the records before it are in
        ("STATE", None, state(2)["value"]),  # nothing pending: passes at once
        ("RECORD", "contacts", messages[5]["record"]),
        ("RECORD", LEDGER_STREAM, ledger[1]["record"]),  # end of input: the last job
        ("STATE", None, state(3)["value"]),
    ]
    assert out[0] == messages[0]
    assert [items for _, items in sent(sandbox)] == [
        [{"email": "a@example.com"}, {"email": "b@example.com"}],
        [{"email": "c@example.com"}],
    ]


def test_ledger_rows_describe_each_job(sandbox: SandboxServer) -> None:
    out = run_mapper(
        mapper_settings(sandbox),
        [schema(), record(id=1, email="a@x.io"), record(id=2, email="a@x.io")],
    )
    (row,) = [m["record"] for m in of_stream(out, LEDGER_STREAM)]
    (job,) = sandbox_jobs(sandbox)
    assert row["job_id"] == job["id"]
    assert row["job_type"] == "validate"
    assert row["item_count"] == 1
    assert row["source_stream"] == "contacts"
    assert row["submitted_at"].endswith("Z")
    expected = hashlib.sha256(json.dumps([{"email": "a@x.io"}], separators=(",", ":")).encode())
    assert row["batch_sha256"] == expected.hexdigest()


def test_identical_items_are_sent_once_per_job(sandbox: SandboxServer) -> None:
    messages = [
        record(id=i, email=e) for i, e in enumerate(["x@a.io", " X@A.io", "y@a.io", "x@a.io"])
    ]
    run_mapper(mapper_settings(sandbox, job_type="validate"), messages)
    assert sent(sandbox) == [("validate", [{"email": "x@a.io"}, {"email": "y@a.io"}])]


def test_batch_size_counts_distinct_items(sandbox: SandboxServer) -> None:
    emails = ["a@x.io", "a@x.io", "b@x.io", "c@x.io", "c@x.io", "d@x.io", "e@x.io"]
    run_mapper(mapper_settings(sandbox, batch_size=2),
               [record(id=i, email=e) for i, e in enumerate(emails)])
    assert [len(items) for _, items in sent(sandbox)] == [2, 2, 1]


def test_state_with_nothing_pending_passes_at_once(sandbox: SandboxServer) -> None:
    messages = [
        schema("other"),
        record("other", id=1),
        state(1),
        record(id=2, email="a@x.io"),
        state(2),
    ]
    out = run_mapper(mapper_settings(sandbox, streams=["contacts"]), messages)
    assert out[:3] == messages[:3]
    assert out[-1] == state(2)


def test_streams_globs_choose_the_streams_acted_on(sandbox: SandboxServer) -> None:
    messages = [
        record("hubspot_contacts", email="a@x.io"),
        record("salesforce_leads", email="b@x.io"),
        record("hubspot_companies", email="c@x.io"),
    ]
    out = run_mapper(mapper_settings(sandbox, streams=["hubspot_con*", "sales*"]), messages)
    assert out[:3] == messages
    assert sorted(item["email"] for _, items in sent(sandbox) for item in items) == [
        "a@x.io",
        "b@x.io",
    ]
    assert [r["record"]["source_stream"] for r in of_stream(out, LEDGER_STREAM)] == [
        "hubspot_contacts",
        "salesforce_leads",
    ]


def test_auto_chooses_validate_or_find_per_record(sandbox: SandboxServer) -> None:
    messages = [
        record(id=1, email="a@x.io", first_name="Ann"),
        record(id=2, first_name=" Bob ", last_name="Stone", domain="X.IO"),
        record(id=3, first_name="Cy", last_name="Lee"),
    ]
    out = run_mapper(mapper_settings(sandbox), messages)
    assert dict(sent(sandbox)) == {
        "validate": [{"email": "a@x.io"}],
        "find": [{"first_name": "bob", "last_name": "stone", "domain": "x.io"}],
    }
    (rejected,) = of_stream(out, REJECTED_STREAM)
    assert rejected["record"]["reason"] == (
        "email_field 'email' is missing and domain_field 'domain' is missing"
    )


def test_dotted_paths_reach_nested_fields(sandbox: SandboxServer) -> None:
    config = mapper_settings(sandbox, email_field="contact.work.email")
    run_mapper(config, [record(id=1, contact={"work": {"email": "n@x.io"}})])
    assert sent(sandbox) == [("validate", [{"email": "n@x.io"}])]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "email_field 'email' is missing"),
        ({"email": None}, "email_field 'email' is null"),
        ({"email": 42}, "email_field 'email' is not a string (int)"),
        ({"email": "   "}, "email_field 'email' is empty"),
    ],
)
def test_unusable_records_are_rejected_not_sent(
    sandbox: SandboxServer, fields: dict, reason: str
) -> None:
    message = record(id=1, **fields)
    out = run_mapper(mapper_settings(sandbox, job_type="validate"), [schema(), message])
    assert out[:2] == [schema(), message]
    (rejected,) = of_stream(out, REJECTED_STREAM)
    assert rejected["record"]["reason"] == reason
    assert rejected["record"]["source_stream"] == "contacts"
    assert rejected["record"]["rejected_at"].endswith("Z")
    assert json.loads(rejected["record"]["record"]) == message["record"]
    assert creates_seen(sandbox) == 0


def test_odd_input_never_crashes(sandbox: SandboxServer) -> None:
    messages = [
        {"type": "RECORD", "stream": "contacts", "record": ["not", "an", "object"]},
        {"type": "RECORD", "stream": "contacts", "record": None},
        record("before_schema", email="Not An Email"),
        {"type": "ACTIVATE_VERSION", "stream": "contacts", "version": 3},
    ]
    out = run_mapper(mapper_settings(sandbox), messages)
    assert out[0] == messages[0]
    reasons = [r["record"]["reason"] for r in of_stream(out, REJECTED_STREAM)]
    assert reasons == [
        "record is not a JSON object (list)",
        "record is not a JSON object (NoneType)",
    ]
    # A syntactically odd email is still the API's to judge.
    assert sent(sandbox)[0][1] == [{"email": "not an email"}]
    assert [
        m for m in out if m.get("stream") != REJECTED_STREAM and m.get("stream") != LEDGER_STREAM
    ] == messages


@pytest.mark.parametrize(
    "nameless",
    [
        {"type": "RECORD", "record": {"email": "no-stream@x.io"}},
        {"type": "RECORD", "stream": 7, "record": {"email": "odd@x.io"}},
        {"type": "SCHEMA", "schema": {}, "key_properties": []},
    ],
    ids=["record-without-stream", "record-with-numeric-stream", "schema-without-stream"],
)
def test_message_without_a_stream_name_stops_naming_its_line(
    sandbox: SandboxServer, nameless: dict
) -> None:
    messages = [record(id=1, email="a@x.io"), state(1), nameless, record(id=2, email="b@x.io")]
    with pytest.raises(InvalidInputLine, match=r"Input line 3 is a \w+ without a `stream` name"):
        run_mapper(mapper_settings(sandbox), messages)
    assert "no-stream@x.io" not in json.dumps(run_mapper.last_output)  # type: ignore[attr-defined]


def test_402_on_second_job_stops_without_releasing_later_state(sandbox: SandboxServer) -> None:
    script_creates(sandbox, "ok", "402")
    messages = [
        record(id=1, email="a@x.io"),
        record(id=2, email="b@x.io"),
        state(2),
        record(id=3, email="c@x.io"),
        record(id=4, email="d@x.io"),
        state(4),
    ]
    with pytest.raises(SubmissionFailedError, match="402") as caught:
        run_mapper(mapper_settings(sandbox, batch_size=2), messages)
    assert "credits" in str(caught.value)
    assert sandbox.faults()["rules"] == []  # both scripted creates happened
    out = run_mapper.last_output  # type: ignore[attr-defined]
    assert [m["value"] for m in out if m["type"] == "STATE"] == [state(2)["value"]]
    assert of_stream(out, "contacts") == [messages[0], messages[1], messages[3], messages[4]]


def test_ambiguous_create_adopts_the_job_it_made(sandbox: SandboxServer) -> None:
    script_creates(sandbox, "ok", "answer-lost")
    messages = [record(id=i, email=f"{i}@x.io") for i in range(4)]
    out = run_mapper(mapper_settings(sandbox, batch_size=2), messages)
    assert sandbox.faults()["rules"] == []  # the second create's answer was lost
    assert creates_seen(sandbox) == 2
    assert [items for _, items in sent(sandbox)] == [
        [{"email": "0@x.io"}, {"email": "1@x.io"}],
        [{"email": "2@x.io"}, {"email": "3@x.io"}],
    ]
    assert [r["record"]["job_id"] for r in of_stream(out, LEDGER_STREAM)] == [
        job["id"] for job in sandbox_jobs(sandbox)
    ]


def test_ambiguous_create_does_not_adopt_a_job_already_known(sandbox: SandboxServer) -> None:
    # Same type and size as job 1, but job 1 is ours already: the lost create is resent.
    script_creates(sandbox, "ok", "503", "ok")
    out = run_mapper(mapper_settings(sandbox, batch_size=2),
                     [record(id=i, email=f"{i}@x.io") for i in range(4)])
    assert sandbox.faults()["rules"] == []  # the second create was answered 503
    assert creates_seen(sandbox) == 3
    jobs = sandbox_jobs(sandbox)
    assert len(jobs) == 2
    assert [r["record"]["job_id"] for r in of_stream(out, LEDGER_STREAM)] == [
        job["id"] for job in jobs
    ]


def test_ambiguous_creates_are_bounded_by_max_retries(sandbox: SandboxServer) -> None:
    script_creates(sandbox, *["503"] * 5)
    with pytest.raises(SubmissionFailedError, match="3 attempts ended ambiguously"):
        run_mapper(mapper_settings(sandbox, max_retries=2),
                   [record(id=1, email="a@x.io"), state(1)])
    assert creates_seen(sandbox) == 3
    assert [m for m in run_mapper.last_output if m["type"] == "STATE"] == []  # type: ignore[attr-defined]


def test_state_hold_keeps_states_behind_the_oldest_open_batch() -> None:
    gate = StateHold()
    gate.hold(2, {"n": 2}, newest_batch_start=1)
    gate.hold(3, {"n": 3}, newest_batch_start=1)  # supersedes 2: no batch opened between
    gate.hold(6, {"n": 6}, newest_batch_start=5)
    assert len(gate) == 2
    assert gate.release(oldest_pending_seq=1) is None
    assert gate.release(oldest_pending_seq=5) == {"n": 3}
    assert gate.release(oldest_pending_seq=None) == {"n": 6}


def test_interleaved_job_types_release_state_only_when_both_are_submitted(
    sandbox: SandboxServer,
) -> None:
    messages = [
        record(id=1, first_name="a", last_name="b", domain="c.io"),
        record(id=2, email="a@x.io"),
        state(2),
        record(id=3, email="b@x.io"),  # fills the validate batch; the find batch is still open
        state(3),
    ]
    out = run_mapper(mapper_settings(sandbox, batch_size=2), messages)
    kinds = [(m["type"], m.get("stream")) for m in out]
    first_state = kinds.index(("STATE", None))
    ledger_rows = [i for i, k in enumerate(kinds) if k == ("RECORD", LEDGER_STREAM)]
    assert ledger_rows[1] < first_state  # STATE only after the find job at the end
    assert [m["value"] for m in out if m["type"] == "STATE"] == [state(3)["value"]]
