"""tap-gtmcli with `batch_config`: BATCH files hold exactly the rows RECORD mode emits, and
no STATE settles a job before its job row and all its result rows are in announced files."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.api.timestamps import parse_timestamp
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.sandboxes import RESULTS, create_jobs, result_truth, start_jobs
from tests.helpers.singer import TapRun, batch_rows, file_rows
from tests.helpers.tap_runs import TAP, WAIT_SETTINGS, run_tap, run_tap_watched

BATCH_SIZE = 700


def batch_config(directory: Path, **overrides: Any) -> dict[str, Any]:
    return {"encoding": {"format": "jsonl", "compression": "gzip"},
            "storage": {"root": directory.as_uri()}, "batch_size": BATCH_SIZE, **overrides}


def settled_jobs(state: dict[str, Any], jobs: list[dict[str, Any]]) -> set[str]:
    """The jobs a STATE tells a resumed run to skip: up to its newest job, not open."""
    bookmark = state.get("bookmarks", {}).get("jobs", {})
    newest = parse_timestamp(bookmark.get("newest_created_at"))
    if newest is None:
        return set()
    settled = set()
    for job in jobs:
        created_at = parse_timestamp(job["created_at"])
        assert created_at is not None
        if job["id"] in bookmark.get("open_jobs", {}):
            continue
        if created_at < newest or job["id"] in bookmark.get("newest_ids", []):
            settled.add(job["id"])
    return settled


def assert_no_key_in_run_or_files(run: TapRun, directory: Path) -> None:
    """Neither the key nor its tail is in the run's output or any BATCH file."""
    assert_no_key(run.stdout, run.stderr)
    for path in directory.iterdir():
        data = path.read_bytes()
        assert_no_key(gzip.decompress(data) if path.suffix == ".gz" else data)


def test_uncompressed_batch_files_go_through_the_tap(sandbox, seeded, tmp_path):
    """`compression: none`: plain JSON-lines files, named so, holding the same rows."""
    batch_dir = tmp_path / "plain"
    config = {"api_key": API_KEY, "api_url": sandbox.url, "results_per_page": 200,
              "batch_config": batch_config(batch_dir, encoding={"format": "jsonl",
                                                                "compression": "none"})}
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    batches = [m for m in run.messages if m["type"] == "BATCH"]
    assert batches
    assert {(m["encoding"]["format"], m["encoding"]["compression"]) for m in batches} == {
        ("jsonl", "none")}
    files = sorted(batch_dir.iterdir())
    assert files and all(path.name.endswith(".jsonl") for path in files)
    assert not [path for path in files if path.read_bytes().startswith(b"\x1f\x8b")]
    assert len(batch_rows(run.messages, "job_results")) == 1500 + 40 + 10 + 900
    assert all(len(file_rows(url)) <= BATCH_SIZE for m in batches for url in m["manifest"])
    assert_no_key_in_run_or_files(run, batch_dir)


@pytest.fixture
def seeded(sandbox):
    for job_type, rows in [("validate", 1500), ("find", 40), ("validate", 10), ("find", 900)]:
        sandbox.seed_jobs(job_type, rows)
        sandbox.advance_clock(1)


def test_batch_files_hold_exactly_the_rows_record_mode_emits(sandbox, seeded, tmp_path):
    config = {"api_key": API_KEY, "api_url": sandbox.url, "results_per_page": 200}
    records = run_tap(tmp_path, config)
    batch_dir = tmp_path / "batches"
    batched = run_tap(tmp_path, {**config, "batch_config": batch_config(batch_dir)})
    assert records.returncode == 0, records.stderr
    assert batched.returncode == 0, batched.stderr

    assert not [m for m in batched.messages if m["type"] == "RECORD"]
    for stream, key in [("jobs", ("id",)), ("job_results", ("job_id", "row_number"))]:
        expected = sorted(records.records(stream), key=lambda row: [row[k] for k in key])
        got = sorted(batch_rows(batched.messages, stream), key=lambda row: [row[k] for k in key])
        assert got == expected, stream  # same rows, same keys, same values
    assert len(batch_rows(batched.messages, "job_results")) == 1500 + 40 + 10 + 900
    # Files of at most batch_size rows, each named by one BATCH message with its encoding.
    batches = [m for m in batched.messages if m["type"] == "BATCH"]
    assert all(len(file_rows(url)) <= BATCH_SIZE for m in batches for url in m["manifest"])
    assert {json.dumps(m["encoding"], sort_keys=True) for m in batches} == {
        json.dumps({"format": "jsonl", "compression": "gzip"}, sort_keys=True)}
    assert sorted(path.as_uri() for path in batch_dir.iterdir()) == sorted(
        url for m in batches for url in m["manifest"])
    # Both runs leave the same incremental state.
    assert batched.last_state is not None and records.last_state is not None
    for field in ("newest_created_at", "newest_ids", "open_jobs"):
        assert (batched.last_state["bookmarks"]["jobs"][field]
                == records.last_state["bookmarks"]["jobs"][field])
    assert_no_key_in_run_or_files(batched, batch_dir)


def test_no_state_settles_a_job_before_its_rows_are_in_announced_files(
    sandbox, seeded, tmp_path
):
    batch_dir = tmp_path / "batches"
    run = run_tap(tmp_path, {"api_key": API_KEY, "api_url": sandbox.url,
                             "results_per_page": 200, "batch_config": batch_config(batch_dir)})
    assert run.returncode == 0, run.stderr
    jobs = sorted(batch_rows(run.messages, "jobs"), key=lambda job: job["created_at"])
    states = assert_states_follow_files(run.messages)
    assert settled_jobs(run.messages[-1]["value"], jobs) == {job["id"] for job in jobs}
    # A STATE every batch_size rows, at the first job boundary after them, not every job
    # (README "BATCH mode"): the STATEs are exactly those the rule places.
    rows_per_job = job_rows_in_file_order(run.messages)
    assert sorted(rows_per_job) == sorted(
        (job["id"], 1 + (job["total"] if job["status"] == "completed" else 0)) for job in jobs)
    # (The SDK's own STATEs at the end of each stream settle nothing new: left aside.)
    settling = [jobs_settled for jobs_settled in states if jobs_settled]
    assert settling == states_by_the_rule(rows_per_job, BATCH_SIZE)
    assert len(settling) < len(jobs), "a STATE after every job, not every batch_size rows"
    assert_no_key_in_run_or_files(run, batch_dir)


def job_rows_in_file_order(messages: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(job id, rows: its job row and its result rows) of each job, in the order its
    result rows (else its job row) went into the files."""
    order: dict[str, int] = {}
    for row in batch_rows(messages, "job_results"):
        order[row["job_id"]] = order.get(row["job_id"], 0) + 1
    for row in batch_rows(messages, "jobs"):
        order.setdefault(row["id"], 0)
    return [(job_id, results + 1) for job_id, results in order.items()]


def states_by_the_rule(rows_per_job: list[tuple[str, int]], batch_size: int) -> list[set[str]]:
    """The jobs each STATE that settles any settles under the rule: one once `batch_size`
    rows went out since the last, at the end of a job; one at the end of the run."""
    states: list[set[str]] = []
    since_state, waiting = 0, set()
    for job_id, rows in rows_per_job:
        since_state += rows
        waiting.add(job_id)
        if since_state >= batch_size:
            states.append(waiting)
            since_state, waiting = 0, set()
    if waiting:
        states.append(waiting)  # the end of the run
    return states


def assert_states_follow_files(messages: list[dict[str, Any]]) -> list[set[str]]:
    """Every job a STATE settles has its job row (as last emitted) and all its result rows
    in files named by earlier BATCH messages; returns the jobs each STATE newly settles."""
    latest = {job["id"]: job for job in batch_rows(messages, "jobs")}
    jobs = sorted(latest.values(), key=lambda job: job["created_at"])
    newly_settled: list[set[str]] = []
    settled_before: set[str] = set()
    for index, message in enumerate(messages):
        if message["type"] != "STATE":
            continue
        # A target that received everything up to here, and nothing after it.
        before = messages[:index]
        announced_jobs = {(row["id"], row["status"]) for row in batch_rows(before, "jobs")}
        announced_results: dict[str, int] = {}
        for row in batch_rows(before, "job_results"):
            announced_results[row["job_id"]] = announced_results.get(row["job_id"], 0) + 1
        for job_id in settled_jobs(message["value"], jobs):
            job = latest[job_id]
            assert (job_id, job["status"]) in announced_jobs, (
                f"STATE #{index} settles {job_id} before its row")
            if job["status"] == "completed":
                assert announced_results.get(job_id, 0) == job["total"], (
                    f"STATE #{index} settles {job_id} before all its result rows")
        settled = settled_jobs(message["value"], jobs)
        newly_settled.append(settled - settled_before)
        settled_before = settled
    return newly_settled


def test_wait_for_jobs_in_batch_mode_keeps_the_state_rule(slow_sandbox, tmp_path):
    job_ids = create_jobs(slow_sandbox, [300, 800, 3000])
    batch_dir = tmp_path / "batches"
    config = {"api_key": API_KEY, "api_url": slow_sandbox.url, "wait_for_jobs": 60,
              **WAIT_SETTINGS, "batch_config": batch_config(batch_dir)}

    def start_when_waiting(message: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        # The flush before the wait names the three pending jobs, then writes a STATE.
        if (message["type"] == "STATE" and not slow_sandbox.stats()["requests"].get(RESULTS)
                and len(batch_rows(messages, "jobs")) == 3):
            start_jobs(slow_sandbox)

    run = run_tap_watched(tmp_path, config, start_when_waiting)
    assert run.returncode == 0, run.stderr
    assert [(job["id"], job["status"]) for job in batch_rows(run.messages, "jobs")] == [
        *[(job_id, "pending") for job_id in job_ids],
        *[(job_id, "completed") for job_id in job_ids],
    ]
    keys = [(row["job_id"], row["row_number"]) for row in batch_rows(run.messages, "job_results")]
    assert len(keys) == len(set(keys)) and set(keys) == result_truth(slow_sandbox, job_ids)
    assert len(assert_states_follow_files(run.messages)) >= 2
    assert run.last_state is not None
    assert run.last_state["bookmarks"]["jobs"]["open_jobs"] == {}
    assert_no_key_in_run_or_files(run, batch_dir)


def test_a_batch_encoding_the_tap_cannot_write_fails_naming_the_field(
    sandbox, seeded, tmp_path
):
    config = {"api_key": API_KEY, "api_url": sandbox.url,
              "batch_config": batch_config(tmp_path / "batches",
                                           encoding={"format": "parquet"})}
    run = run_tap(tmp_path, config)
    assert run.returncode != 0
    assert "batch_config.encoding.format 'parquet' is not supported by tap-gtmcli" in run.stderr
    assert_no_key(run.stdout + run.stderr)


def test_about_declares_the_batch_capability():
    about = json.loads(subprocess.run([TAP, "--about", "--format=json"], capture_output=True,
                                      text=True, check=True).stdout)
    assert "batch" in about["capabilities"]
    assert "batch_config" in about["settings"]["properties"]
