"""The demo's submit job (`meltano run gtmcli-submit`) pays once per contact.

The scenario of issue 16: the demo's contacts are submitted, one row is appended to the
CSV (so tap-spreadsheets re-reads the whole file), and the job runs again: exactly the new
contact is sent. A forced full re-read then sends nothing. What was sent is counted in
the sandbox's jobs.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.demo.generate_contacts import CSV_PATH
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.meltano import Pipelines

pytestmark = pytest.mark.e2e

NEW_EMAIL = "pay.once@newcustomer.example"


def new_jobs(pipelines: Pipelines, before: set[str]) -> list[dict[str, Any]]:
    return [job for job in pipelines.sandbox.jobs() if job["id"] not in before]


def ledger_rows(directory: Path) -> list[dict[str, Any]]:
    path = directory / "gtmcli_submissions.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def test_demo_submit_job_sends_only_the_new_contact(pipelines: Pipelines, e2e_dir: Path) -> None:
    work = e2e_dir / "pay-once"
    (work / "jsonl").mkdir(parents=True)
    contacts = work / "contacts.csv"
    shutil.copy(CSV_PATH, contacts)
    env = {
        "TAP_SPREADSHEETS_FILES": json.dumps([{"path": str(contacts), "format": "csv",
                                               "table_name": "contacts",
                                               "primary_keys": ["id"]}]),
        "MAPPER_GTMCLI_SUBMISSION_INDEX": str(work / "submission_index.sqlite"),
        "TARGET_JSONL_DESTINATION_PATH": str(work / "jsonl"),
        "MELTANO_RUN_STATE_ID_SUFFIX": "pay-once",
    }

    before = {job["id"] for job in pipelines.sandbox.jobs()}
    first = pipelines.run("gtmcli-submit", log_name="pay-once-1", env=env)
    first_jobs = new_jobs(pipelines, before)
    paid = sum(int(job["total"]) for job in first_jobs)
    assert paid > 1000

    with contacts.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with contacts.open("a", encoding="utf-8", newline="") as handle:
        csv.DictWriter(handle, fieldnames=list(rows[0])).writerow(
            {**dict.fromkeys(rows[0], ""), "id": str(len(rows) + 1), "email": NEW_EMAIL,
             "first_name": "Pay", "last_name": "Once", "domain": "newcustomer.example"}
        )
    before = {job["id"] for job in pipelines.sandbox.jobs()}
    ledger_before = len(ledger_rows(work / "jsonl"))
    passed_before = lines(work / "jsonl" / "contacts.jsonl")
    second = pipelines.run("gtmcli-submit", log_name="pay-once-2", env=env)

    [job] = new_jobs(pipelines, before)
    assert job["total"] == 1
    assert pipelines.sandbox.get(f"/_sandbox/jobs/{job['id']}/items")["items"] == [
        {"email": NEW_EMAIL}
    ]
    second_log = second.log_path.read_text()
    assert f"Skipped {paid:,} items submitted in the last 30 days" in second_log
    [row] = ledger_rows(work / "jsonl")[ledger_before:]
    assert (row["job_id"], row["item_count"], row["skipped_item_count"]) == (job["id"], 1, paid)
    # Every record passed through, the skipped ones too.
    assert lines(work / "jsonl" / "contacts.jsonl") - passed_before == len(rows) + 1

    # Unchanged list, read again in full: nothing is sent.
    before = {job["id"] for job in pipelines.sandbox.jobs()}
    third = pipelines.run("--full-refresh", "gtmcli-submit", log_name="pay-once-3", env=env)
    assert new_jobs(pipelines, before) == []
    third_log = third.log_path.read_text()
    assert f"Skipped {paid + 1:,} items submitted in the last 30 days" in third_log
    assert "Submitted 0 GTMCLI jobs (0 items)" in third_log

    # The key the plugins were given (tests/e2e/conftest.py `pipelines`), nor its tail.
    assert pipelines.sandbox.api_key == API_KEY
    assert_no_key(first.log_path.read_text(), second_log, third_log)
