"""Enrich mode: records come back with their job's results, in order, STATE after them."""

from __future__ import annotations

from typing import Any

import pytest

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.errors import EnrichmentFailedError
from tap_gtmcli.submit.enrich import ENRICHMENT_SCHEMA, RESULTS_PER_PAGE
from tap_gtmcli.submit.submitter import LEDGER_STREAM, REJECTED_STREAM
from tests.helpers.keys import API_KEY
from tests.helpers.mapper_runs import mapper_settings, run_mapper
from tests.helpers.sandboxes import fast_sandbox, sandbox_jobs
from tests.helpers.singer import fixture_messages, fixture_text, of_stream, record, schema, state

ENRICH = {"mode": "enrich", "poll_interval": 0.01, "max_wait": 5}
NULLS = dict.fromkeys(ENRICHMENT_SCHEMA)
#: The error a sandbox job of one item that fails at once reports.
FAILED_JOB_ERROR = (
    "Processing stopped after 0 of 1 items: the verification backend is unavailable"
)


def results_by_item(server: Any, job_id: str) -> list[dict]:
    client = GTMCLIClient(api_url=server.url, api_key=API_KEY)
    try:
        return client.get_results_page(job_id, 1, 1000)["results"]
    finally:
        client.close()


def test_contacts_fixture_is_enriched_in_order(sandbox: Any) -> None:
    settings = {
        "streams": ["contacts"],
        "domain_field": "company.domain",
        "batch_size": 3,
        **ENRICH,
    }
    out = run_mapper(mapper_settings(sandbox, **settings), fixture_text("contacts.singer"))
    upstream = fixture_messages("contacts.singer")

    (contacts_schema,) = of_stream(out, "contacts", "SCHEMA")
    assert contacts_schema["schema"]["properties"] == {
        **upstream[0]["schema"]["properties"],
        **ENRICHMENT_SCHEMA,
    }
    assert of_stream(out, "accounts", "SCHEMA") == [upstream[1]]

    ledger = {
        m["record"]["job_type"] + str(i): m["record"]
        for i, m in enumerate(of_stream(out, LEDGER_STREAM))
    }
    validate_job, find_job, last_job = (row["job_id"] for row in ledger.values())
    validate_rows = results_by_item(sandbox, validate_job)
    find_rows = results_by_item(sandbox, find_job)
    last_rows = results_by_item(sandbox, last_job)

    def enriched(message: dict, row: dict | None, job_id: str | None) -> dict:
        fields = dict(NULLS)
        if row is not None:
            fields.update(
                gtmcli_status=row.get("status"),
                gtmcli_sub_status=row.get("sub_status") or None,
                gtmcli_provider=row.get("provider"),
                gtmcli_email=row.get("email") or None,
                gtmcli_confidence=row.get("confidence"),
                gtmcli_convention=row.get("convention") or None,
                gtmcli_job_id=job_id,
            )
        return {**message, "record": {**message["record"], **fields}}

    contacts = of_stream(out, "contacts")
    assert contacts == [
        enriched(upstream[8], None, None),  # rejected: passes at once, unenriched
        enriched(upstream[9], None, None),
        enriched(upstream[3], validate_rows[0], validate_job),
        enriched(upstream[4], validate_rows[1], validate_job),
        enriched(upstream[5], validate_rows[0], validate_job),  # duplicate of item 1
        enriched(upstream[10], validate_rows[2], validate_job),
        enriched(upstream[14], None, None),
        enriched(upstream[7], find_rows[0], find_job),
        enriched(upstream[13], last_rows[0], last_job),
    ]
    assert contacts[2]["record"]["score"] == 0.75

    kinds = [(m["type"], m.get("stream")) for m in out]
    states = [i for i, kind in enumerate(kinds) if kind[0] == "STATE"]
    assert [out[i] for i in states] == [upstream[6], upstream[11], upstream[15]]
    # Each STATE comes only after every record before it was emitted enriched.
    assert states[0] > out.index(contacts[5])
    assert states[1] > out.index(contacts[7])
    assert states[2] > out.index(contacts[8])
    assert len(of_stream(out, REJECTED_STREAM)) == 3
    # Streams not acted on pass at once.
    assert out[2] == upstream[2]


def test_result_row_for_another_email_is_an_error_naming_job_and_row(sandbox: Any) -> None:
    # Every results page serves page 1's rows: row 1001 (page 2's first) answers item 1.
    sandbox.set_quirks("results-ignore-page")
    emails = [f"{n}@x.io" for n in range(RESULTS_PER_PAGE + 1)]
    messages = [*(record(id=n, email=email) for n, email in enumerate(emails)), state(1)]
    settings = mapper_settings(sandbox, **ENRICH, batch_size=len(emails))
    with pytest.raises(EnrichmentFailedError) as raised:
        run_mapper(settings, messages)
    (job,) = sandbox_jobs(sandbox)
    assert f"{job['id']} result row {RESULTS_PER_PAGE + 1} answers a different email" in str(
        raised.value)
    assert [m for m in run_mapper.last_output if m["type"] == "STATE"] == []  # type: ignore[attr-defined]


def test_failed_job_ends_the_run_without_its_state() -> None:
    with fast_sandbox(fail_job_share=1.0) as failing:  # every job fails at once
        with pytest.raises(EnrichmentFailedError) as raised:
            run_mapper(mapper_settings(failing, **ENRICH),
                       [schema(), record(id=1, email="a@x.io"), state(1)])
        (job,) = sandbox_jobs(failing)
    assert f"{job['id']} failed: {FAILED_JOB_ERROR}" in str(raised.value)
    out = run_mapper.last_output  # type: ignore[attr-defined]
    assert [m for m in out if m["type"] == "STATE"] == []
    assert of_stream(out, "contacts") == []


def test_job_not_done_within_max_wait_times_out() -> None:
    with fast_sandbox(start_delay=3600) as pending:  # its jobs start in an hour
        with pytest.raises(EnrichmentFailedError,
                           match=r"did not complete within max_wait=0\.05 s"):
            run_mapper(mapper_settings(pending, **{**ENRICH, "max_wait": 0.05}),
                       [record(id=1, email="a@x.io")])
        assert [job["status"] for job in sandbox_jobs(pending)] == ["pending"]


def test_find_results_are_attached_by_position(sandbox: Any) -> None:
    messages = [
        record(id=1, first_name="Ann", last_name="Lee", domain="x.io"),
        record(id=2, first_name="Bo", last_name="Ray", domain="y.io"),
        record(id=3, first_name="ann", last_name="LEE", domain="X.io"),
    ]
    out = run_mapper(mapper_settings(sandbox, **ENRICH, job_type="find"), messages)
    [job] = sandbox_jobs(sandbox)
    assert sandbox.job_items(job["id"]) == [
        {"first_name": "ann", "last_name": "lee", "domain": "x.io"},
        {"first_name": "bo", "last_name": "ray", "domain": "y.io"},
    ]
    first, second = results_by_item(sandbox, job["id"])
    # Records 1 and 3 are one item: both get its row, record 2 the second row.
    enriched = [(m["record"]["gtmcli_email"], m["record"]["gtmcli_confidence"])
                for m in of_stream(out, "contacts")]
    assert enriched == [(row["email"], row.get("confidence")) for row in (first, second, first)]
    assert first["email"] != second["email"]


def test_a_new_schema_flushes_the_records_waiting_under_the_old_one(sandbox: Any) -> None:
    messages = [schema(), record(id=1, email="a@x.io"), schema(), record(id=2, email="b@x.io")]
    out = run_mapper(mapper_settings(sandbox, **ENRICH), messages)
    kinds = [(m["type"], m.get("stream"), m.get("record", {}).get("id")) for m in out]
    assert kinds == [
        ("SCHEMA", "contacts", None),
        ("SCHEMA", LEDGER_STREAM, None),
        ("RECORD", LEDGER_STREAM, None),
        ("RECORD", "contacts", 1),
        ("SCHEMA", "contacts", None),
        ("RECORD", LEDGER_STREAM, None),
        ("RECORD", "contacts", 2),
    ]
