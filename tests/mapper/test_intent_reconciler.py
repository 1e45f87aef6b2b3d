"""Reconciling the creates an interrupted run left open, in the hard cases: batches sent
in the same second with the same type and size.

Each test leaves intents in a SQLite index as a killed run would (written before the
create, never closed), makes the jobs those creates made (or not) in a sandbox, then
runs the mapper over the same input and counts what GTMCLI received.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.submit.items import ItemKey, item_payload
from tap_gtmcli.submit.resubmit_guard import ResubmitGuard
from tap_gtmcli.submit.submission_index import SQLiteIndex, account_secret
from tap_gtmcli.submit.submitter import LEDGER_STREAM
from tests.helpers.keys import API_KEY
from tests.helpers.mapper_runs import mapper_settings as sandbox_config
from tests.helpers.mapper_runs import run_mapper
from tests.helpers.sandboxes import job_ids, received_items
from tests.helpers.singer import of_stream, record, schema

STREAM = "contacts"


def interrupted_creates(
    server: Any, index_path: Path, batches: list[tuple[str, list[ItemKey]]],
    made: list[bool], sent_at: float,
) -> list[str | None]:
    """Intents for `batches` as a run killed mid-create leaves them, all sent at the same
    moment; the jobs of those whose `made` is True exist in GTMCLI. Their ids, or None."""
    index = SQLiteIndex(str(index_path))
    guard = ResubmitGuard(index, secret=account_secret(server.url, API_KEY), window_days=30,
                          need_results=False)
    client = GTMCLIClient(api_url=server.url, api_key=API_KEY)
    made_ids: list[str | None] = []
    try:
        for (job_type, keys), exists in zip(batches, made, strict=True):
            ref = index.new_intent(guard.account, job_type, STREAM, now=int(sent_at))
            payloads = [item_payload(key) for key in keys]
            index.mark_sent(ref, digests=guard.digests(job_type, keys),
                            batch_sha256=hashlib.sha256(repr(payloads).encode()).hexdigest(),
                            sent_at=sent_at)
            made_ids.append(client.create_job(job_type, payloads)["id"] if exists else None)
    finally:
        client.close()
        index.close()
    return made_ids


def validate_batch(prefix: str) -> tuple[str, list[ItemKey]]:
    return "validate", [f"{prefix}{number}@example.com" for number in range(10)]


def find_batch(domain: str) -> tuple[str, list[ItemKey]]:
    return "find", [(f"first{number}", f"last{number}", domain) for number in range(10)]


def replay(batches: list[tuple[str, list[ItemKey]]]) -> list[dict]:
    """The upstream messages holding every batch's items, as the rerun reads them."""
    messages: list[dict] = [schema()]
    for job_type, keys in batches:
        for key in keys:
            if job_type == "validate":
                messages.append(record(id=len(messages), email=key))
            else:
                first, last, domain = key
                messages.append(record(id=len(messages), first_name=first, last_name=last,
                                       domain=domain))
    return messages


def reconciliations(out: list[dict]) -> dict[str, str]:
    return {row["job_id"]: row["reconciliation"] for row in
            (message["record"] for message in of_stream(out, LEDGER_STREAM))
            if row["reconciliation"]}


def received(server: Any) -> Counter[str]:
    """How often the sandbox received each item: an email, or a find's "domain/first"."""
    return Counter(key[1] if key[0] == "validate" else f"{key[3]}/{key[1]}"
                   for key in received_items(server))


def test_validate_batches_alike_are_told_apart_by_their_first_result(
    sandbox: Any, tmp_path: Path
) -> None:
    batches = [validate_batch("a"), validate_batch("b")]
    index = tmp_path / "i.sqlite"
    first, second = interrupted_creates(sandbox, index, batches, [True, True],
                                        sent_at=time.time())
    config = sandbox_config(sandbox, submission_index=str(index), batch_size=10)

    out = run_mapper(config, replay(batches))

    assert job_ids(sandbox) == {first, second}  # nothing sent again
    assert set(received(sandbox).values()) == {1}
    reasons = reconciliations(out)
    assert set(reasons) == {first, second}
    assert all("of 2 jobs alike, the one whose first result is the batch's first item"
               in reason for reason in reasons.values())


def test_find_batches_alike_are_sent_again_and_the_ledger_says_why(
    sandbox: Any, tmp_path: Path
) -> None:
    """Finder results show the email found, not the item: two find jobs of one size made
    in the same second cannot be told apart, so both batches are paid for again (the
    residual risk the README names) rather than one of them lost."""
    batches = [find_batch("a.io"), find_batch("b.io")]
    index = tmp_path / "i.sqlite"
    made = interrupted_creates(sandbox, index, batches, [True, True], sent_at=time.time())
    config = sandbox_config(sandbox, submission_index=str(index), batch_size=10,
                            request_timeout=1)

    out = run_mapper(config, replay(batches))

    assert set(received(sandbox).values()) == {2}  # each item twice: once per create
    resent = [row for row in (m["record"] for m in of_stream(out, LEDGER_STREAM))
              if row["job_id"] not in made]
    assert len(resent) == 2
    for row in resent:
        assert row["reconciliation"].startswith("resent: the create of 10 find items")
        assert "matches 2 jobs" in row["reconciliation"]
        assert all(job_id in row["reconciliation"] for job_id in made if job_id)


def test_of_two_creates_alike_only_one_made_a_job_which_goes_to_the_right_batch(
    sandbox: Any, tmp_path: Path
) -> None:
    batches = [validate_batch("a"), validate_batch("b")]
    index = tmp_path / "i.sqlite"
    _, made = interrupted_creates(sandbox, index, batches, [False, True],
                                  sent_at=time.time())
    config = sandbox_config(sandbox, submission_index=str(index), batch_size=10,
                            request_timeout=1)

    out = run_mapper(config, replay(batches))

    counts = received(sandbox)
    assert counts == Counter({email: 1 for _, keys in batches for email in keys})
    assert [item["email"] for item in sandbox.job_items(made)] == batches[1][1]
    rows = {row["job_id"]: row for row in (m["record"] for m in of_stream(out, LEDGER_STREAM))}
    assert rows[made]["reconciliation"].startswith("adopted:")
    [resent] = [row for job_id, row in rows.items() if job_id != made and row["item_count"]]
    assert resent["reconciliation"].startswith("resent: the create of 10 validate items")
    assert "made no job" in resent["reconciliation"]
