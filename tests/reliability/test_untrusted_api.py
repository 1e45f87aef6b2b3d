"""The tap against a server that is wrong in every field but a job's `total`.

Each class of quirk (the sandbox's `quirks.QUIRKS` and fault rules) is run with exact
rows, the run's outcome and the state a rerun starts from: a job whose rows do not add
up is never settled, and the rerun on a healthy server brings every row exactly once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest
import requests

from tap_gtmcli.api.errors import GTMCLIFatalError, GTMCLIRetriesExhaustedError
from tap_gtmcli.tap.job_bookmarks import UNKNOWN_STATUS_GRACE, JobBookmarks
from tap_gtmcli.tap.job_rows import JobsNotReadError
from tap_gtmcli.tap.tap import TapGTMCLI
from tests.helpers import key_scan
from tests.helpers.keys import API_KEY as TEST_API_KEY
from tests.helpers.sandboxes import fast_sandbox, seeded_truth
from tests.helpers.tap_runs import TAP, cli_environment, run_tap, run_tap_in_process, tap_settings

SCHEMAS = {name: stream.schema for name, stream in
           TapGTMCLI(config={"api_key": TEST_API_KEY}).streams.items()}


def true_rows(server, job_id: str, total: int) -> dict[int, dict]:
    """The job's rows as a healthy sandbox serves them, by row number."""
    answer = requests.get(f"{server.url}/v1/jobs/{job_id}/results",
                          params={"page": 1, "per_page": 1000}, timeout=10,
                          headers={"Authorization": f"Bearer {TEST_API_KEY}"}).json()
    pages = [answer]
    for page in range(2, answer["total_pages"] + 1):
        pages.append(requests.get(f"{server.url}/v1/jobs/{job_id}/results",
                                  params={"page": page, "per_page": 1000}, timeout=10,
                                  headers={"Authorization": f"Bearer {TEST_API_KEY}"}).json())
    rows = [row for body in pages for row in body["results"]]
    assert len(rows) == total
    return dict(enumerate(rows, start=1))


def assert_exact(run, truth: set[tuple[str, int]]) -> None:
    counted = Counter(run.result_keys)
    assert set(counted) == truth, (
        f"missing {len(truth - set(counted))}, unexpected {len(set(counted) - truth)}")
    assert max(counted.values(), default=1) == 1, "a row was emitted twice"


def assert_rows_fit_schema(run) -> None:
    for stream in ("jobs", "job_results"):
        for record in run.records(stream):
            jsonschema.validate(record, SCHEMAS[stream])


def open_jobs(run) -> dict:
    return run.last_state["bookmarks"]["jobs"]["open_jobs"]


# --- 1, 2: a job's rows are checked against its total; paging is bounded by it ------


@pytest.mark.parametrize("quirk", ["results-total-pages-one", "results-total-pages-zero",
                                   "results-total-pages-grow"])
def test_wrong_total_pages_cannot_cut_or_stretch_a_job(quirk, monkeypatch):
    with fast_sandbox() as server:
        server.seed_jobs("validate", 2500)
        server.seed_jobs("find", 7)
        truth = seeded_truth(server)
        server.set_quirks(quirk)
        run = run_tap_in_process(tap_settings(server, results_per_page=1000), monkeypatch)
        assert run.ok, repr(run.error)
        assert_exact(run, truth)
        assert open_jobs(run) == {}
        # Pages asked: exactly what the jobs' totals imply (3 + 1), never more.
        assert server.stats()["requests"]["GET /v1/jobs/{id}/results"] == 4


@pytest.mark.parametrize(("quirk", "problem"), [
    ("results-missing", r"answered no `results`"),
    ("results-object", r"answered `results` as dict, not a list"),
    ("results-null-row", r"row 1 of the page as null, not an object"),
    ("results-string-row", r"row 1 of the page as str, not an object"),
    ("results-short", r"page 3 of 3 \(1000 rows a page\) should hold 500 of the job's 2500"),
    ("results-ignore-page", r"page 2 repeats the rows of an earlier page"),
    ("results-page-off", r"asked for page 1, answered page 2"),
    ("results-per-page-over",
     r"page 1 answered per_page 2000, not a number from 1 to the 1000 asked for"),
])
def test_a_job_whose_rows_do_not_add_up_stays_open_and_the_rerun_reads_it(
    quirk, problem, monkeypatch
):
    with fast_sandbox() as server:
        (bad,) = server.seed_jobs("validate", 2500)
        (good,) = server.seed_jobs("find", 7)
        truth = seeded_truth(server)
        rows = true_rows(server, bad, 2500)
        server.set_quirks(quirk)
        first = run_tap_in_process(tap_settings(server, results_per_page=1000), monkeypatch)

        assert isinstance(first.error, JobsNotReadError)
        # The quirk bends every job's answers; the 7-row job survives those that bite
        # only a job of several pages.
        survives = quirk == "results-ignore-page"
        unread = {bad} if survives else {bad, good}
        assert first.error.problems.keys() == unread and bad in str(first.error)
        assert re.search(problem, first.log), first.log
        # Whatever was emitted is the job's own rows at their own positions.
        for job_id, number in first.result_keys:
            assert (job_id, number) in truth
        emitted = {(r["job_id"], r["row_number"]): r for r in first.records("job_results")}
        for (job_id, number), record in emitted.items():
            if job_id == bad:
                assert record["email"] == rows[number]["email"], "a row was renumbered"
        # A job that added up is settled; the others are kept open, to be read again.
        if survives:
            assert {k for k in first.result_keys if k[0] == good} == {
                (good, n) for n in range(1, 8)}
        assert set(open_jobs(first)) == unread
        assert all(open_jobs(first)[job_id]["unread"] for job_id in unread)

        server.set_quirks()
        second = run_tap_in_process(tap_settings(server, results_per_page=1000), monkeypatch,
                                    state=first.last_state)
        assert second.ok, repr(second.error)
        assert {job["id"] for job in second.records("jobs")} == unread
        assert set(first.result_keys) | set(second.result_keys) == truth
        assert Counter(second.result_keys).most_common(1)[0][1] == 1
        assert open_jobs(second) == {}


def test_a_repeating_job_list_ends_at_the_first_page_without_a_new_job(monkeypatch):
    with fast_sandbox(list_page_size=3) as server:
        server.seed_jobs("validate", 5, jobs=3)
        truth = seeded_truth(server)
        server.set_quirks("list-repeats")
        server.reset_stats()
        run = run_tap_in_process(tap_settings(server), monkeypatch)
        assert run.ok, repr(run.error)
        assert len(run.records("jobs")) == 3
        assert_exact(run, truth)
        assert server.stats()["requests"]["GET /v1/jobs"] == 2
        assert "lists no job not already seen" in run.log


def test_a_job_list_without_a_jobs_array_fails_and_advances_nothing(monkeypatch):
    with fast_sandbox() as server:
        server.seed_jobs("validate", 5)
        server.set_quirks("list-no-jobs")
        run = run_tap_in_process(tap_settings(server), monkeypatch)
        assert isinstance(run.error, GTMCLIFatalError)
        assert "GET /v1/jobs answered no `jobs` array (keys: data)" in str(run.error)
        assert run.records("jobs") == [] and run.states == []


# --- 3: job ids are one encoded path segment ---------------------------------------


def test_job_ids_of_any_characters_stay_inside_their_own_path(monkeypatch):
    ids = ["..", "%2e%2e", "a?b", "a#b", "a b", "%20", ".", "12345"]
    with fast_sandbox() as server:
        for index, job_id in enumerate(ids):
            server.seed_jobs("validate", 3 + index, ids=[job_id])
        truth = seeded_truth(server)
        server.set_quirks("numeric-ids")
        server.reset_stats()
        run = run_tap_in_process(tap_settings(server), monkeypatch)
        assert run.ok, repr(run.error)
        assert {job["id"] for job in run.records("jobs")} == set(ids)
        assert_exact(run, truth)
        routes = server.stats()["requests"]
        assert routes == {"GET /v1/jobs": 1, "GET /v1/jobs/{id}/results": len(ids)}


# --- 4: timestamps -------------------------------------------------------------------


@pytest.mark.parametrize("quirk", ["created-at-epoch", "created-at-epoch-string",
                                   "created-at-rfc2822", "created-at-space-nanos",
                                   "created-at-null", "created-at-empty", "created-at-missing"])
def test_every_job_is_extracted_whatever_its_created_at_and_only_once(quirk, monkeypatch):
    with fast_sandbox() as server:
        server.seed_jobs("validate", 4, jobs=3)
        truth = seeded_truth(server)
        server.set_quirks(quirk)
        first = run_tap_in_process(tap_settings(server), monkeypatch)
        assert first.ok, repr(first.error)
        assert len(first.records("jobs")) == 3
        assert_exact(first, truth)
        assert_rows_fit_schema(first)
        undated = quirk in ("created-at-null", "created-at-empty", "created-at-missing")
        assert ("has no readable created_at" in first.log) == undated
        second = run_tap_in_process(tap_settings(server), monkeypatch, state=first.last_state)
        assert second.ok and second.records("jobs") == [] and second.result_keys == []


def test_a_job_stamped_a_day_ahead_does_not_push_the_bookmark_past_our_clock(monkeypatch):
    with fast_sandbox() as server:
        server.seed_jobs("validate", 3, jobs=2)
        server.set_quirks("newest-in-future")
        first = run_tap_in_process(tap_settings(server), monkeypatch)
        assert first.ok, repr(first.error)
        bookmark = datetime.fromisoformat(
            first.last_state["bookmarks"]["jobs"]["newest_created_at"].replace("Z", "+00:00"))
        assert bookmark <= datetime.now(timezone.utc) + timedelta(minutes=5)
        soon = datetime.now(timezone.utc) + timedelta(hours=1)
        ahead = [job for job in first.records("jobs") if datetime.fromisoformat(
            job["created_at"].replace("Z", "+00:00")) > soon]
        assert len(ahead) == 1  # the row keeps the server's value
        (later,) = server.seed_jobs("find", 2)  # created after the first run, before "ahead"
        second = run_tap_in_process(tap_settings(server), monkeypatch, state=first.last_state)
        assert second.ok, repr(second.error)
        # The skewed job is not extracted again; the new one is.
        assert [job["id"] for job in second.records("jobs")] == [later]
        assert set(second.result_keys) == {(later, 1), (later, 2)}


# --- 5: a whole-answer deadline -------------------------------------------------------


def test_a_dripping_answer_is_cut_at_request_timeout_and_retried(monkeypatch):
    with fast_sandbox() as server:
        server.seed_jobs("validate", 40)
        truth = seeded_truth(server)
        server.add_fault_rules([{"method": "GET", "path_prefix": "/v1/jobs/",
                                 "body": "drip", "delay": 0.05}])
        started = time.monotonic()
        run = run_tap_in_process(tap_settings(server, request_timeout=1), monkeypatch)
        assert run.ok, repr(run.error)
        assert time.monotonic() - started < 15
        assert_exact(run, truth)
        assert "no whole answer within request_timeout" in run.log
        assert server.faults()["rules"] == []  # the one dripping answer was served


# --- 7: every record fits the SCHEMA sent ----------------------------------------------


def test_values_of_the_wrong_type_move_to_additional_fields(monkeypatch):
    with fast_sandbox() as server:
        (job_id,) = server.seed_jobs("validate", 30)
        rows = true_rows(server, job_id, 30)
        server.set_quirks("results-wrong-types")
        run = run_tap_in_process(tap_settings(server), monkeypatch)
        assert run.ok, repr(run.error)
        assert_rows_fit_schema(run)
        records = run.records("job_results")
        assert len(records) == 30
        for record in records:
            assert record["status"] is None and record["email"] is None
            assert record["additional_fields"] == {
                "status": 7, "email": [rows[record["row_number"]]["email"], "second"]}
        assert run.log.count("with a type its schema does not allow") == 2


def test_fields_of_a_newer_api_version_are_kept_in_additional_fields(monkeypatch):
    with fast_sandbox() as server:
        (job_id,) = server.seed_jobs("validate", 30)
        rows = true_rows(server, job_id, 30)
        server.set_quirks("unknown-fields")
        run = run_tap_in_process(tap_settings(server), monkeypatch)
        assert run.ok, repr(run.error)
        assert_rows_fit_schema(run)
        (job,) = run.records("jobs")
        assert job["additional_fields"] == {"risk_note": {"job": job_id}}
        records = run.records("job_results")
        assert sorted(record["row_number"] for record in records) == list(range(1, 31))
        for record in records:
            true_row = rows[record["row_number"]]
            assert record["email"] == true_row["email"]
            assert record["additional_fields"] == {"risk_note": {"row_email": true_row["email"]}}
        # Said once per stream, not once per row.
        assert run.log.count("does not know yet on 'job_results': risk_note") == 1
        assert run.log.count("does not know yet on 'jobs': risk_note") == 1


# --- 8: statuses ----------------------------------------------------------------------


def test_an_unknown_status_is_tracked_for_a_while_then_forgotten(monkeypatch):
    with fast_sandbox(start_delay=3600) as server:
        (job_id,) = server.seed_jobs("validate", 5, status="pending")
        server.set_quirks("status-expired")
        first = run_tap_in_process(tap_settings(server, wait_for_jobs=2, poll_interval=0.5),
                                   monkeypatch)
        assert first.ok, repr(first.error)
        entry = open_jobs(first)[job_id]
        assert entry["status"] == "expired" and entry["unknown_since"]
        assert "waiting up to" not in first.log  # an unknown status is not waited for
        second = run_tap_in_process(tap_settings(server), monkeypatch, state=first.last_state)
        assert second.records("jobs") == []  # unchanged: not emitted again
    later = datetime.now(timezone.utc) + UNKNOWN_STATUS_GRACE + timedelta(hours=1)
    bookmarks = JobBookmarks(state=json.loads(json.dumps(
        second.last_state["bookmarks"]["jobs"])), now=lambda: later)
    assert bookmarks.expired_unknown_jobs() == [job_id]


def test_a_failed_job_whose_results_are_refused_says_why_on_its_row(monkeypatch):
    with fast_sandbox() as server:
        server.seed_jobs("validate", 1000, status="failed")
        server.set_quirks("results-refuse-failed")
        run = run_tap_in_process(tap_settings(server), monkeypatch)
        assert run.ok, repr(run.error)
        (job,) = run.records("jobs")
        assert job["status"] == "failed"
        assert "answered 409" in job["results_error"]
        assert run.result_keys == [] and open_jobs(run) == {}


# --- 10: errors name method and path ----------------------------------------------------


def test_connection_refused_names_the_request_and_the_host(monkeypatch):
    with fast_sandbox() as server:
        url = server.url
    run = run_tap_in_process(tap_settings(url, max_retries=1), monkeypatch)
    assert isinstance(run.error, GTMCLIRetriesExhaustedError)
    port = url.rsplit(":", 1)[1]
    assert f"GET /v1/jobs failed after 1 attempt(s): 127.0.0.1:{port} refused the connection" \
        in str(run.error)


def test_a_401_from_a_host_we_were_redirected_to_is_not_blamed_on_the_key(monkeypatch):
    with fast_sandbox() as server, fast_sandbox(api_key="another-key") as elsewhere:
        server.seed_jobs("validate", 3)
        server.add_fault_rules([{"method": "GET", "path_prefix": "/v1/jobs",
                                 "body": "redirect", "location": f"{elsewhere.url}/v1/jobs"}])
        run = run_tap_in_process(tap_settings(server), monkeypatch)
        assert isinstance(run.error, GTMCLIFatalError)
        message = str(run.error)
        assert "a host GTMCLI redirected to" in message and "api_key" not in message
        assert TEST_API_KEY not in message + run.log


def test_a_redirect_loop_is_named(monkeypatch):
    with fast_sandbox() as server:
        server.add_fault_rules([{"method": "GET", "path_prefix": "/v1/jobs", "count": 200,
                                 "body": "redirect", "location": f"{server.url}/v1/jobs"}])
        run = run_tap_in_process(tap_settings(server, max_retries=0), monkeypatch)
        assert "GET /v1/jobs was redirected too many times (a redirect loop)" in str(run.error)


# --- 9: signals ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_loader_reads_slowly_leaves_whole_lines_and_a_true_state(
    signum, tmp_path: Path
):
    with fast_sandbox() as server:
        server.seed_jobs("validate", 3000, jobs=6)
        truth = seeded_truth(server)
        config = tmp_path / "config.json"
        config.write_text(json.dumps(tap_settings(server, results_per_page=500)))
        tap = subprocess.Popen([TAP, "--config", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=cli_environment())
        assert tap.stdout is not None
        # A slow loader: read a little, let the pipe fill, then signal mid-run. Read
        # from the fd itself: `communicate` below reads the fd, not a reader's buffer.
        taken = b""
        while len(taken) < 300_000:
            taken += os.read(tap.stdout.fileno(), 65_536)
        time.sleep(0.5)
        tap.send_signal(signum)
        rest, stderr = tap.communicate(timeout=30)
        output = (taken + rest).decode()
        key_scan.record("tap stderr", stderr.decode())
        assert tap.returncode == 128 + signum, stderr.decode()[-2000:]
        assert output.endswith("\n")
        messages = [json.loads(line) for line in output.splitlines()]  # every line whole
        assert messages[-1]["type"] == "STATE"
        state = messages[-1]["value"]
        assert b"Stopped by signal SIG" in stderr

        rows = {(m["record"]["job_id"], m["record"]["row_number"]) for m in messages
                if m["type"] == "RECORD" and m["stream"] == "job_results"}
        assert rows < truth  # stopped part-way
        rerun = run_tap(tmp_path, tap_settings(server, results_per_page=500), state)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        again = set(rerun.result_keys)
        assert rows | again == truth  # nothing lost


def test_the_key_never_appears_in_any_quirk_run(monkeypatch):
    # One run per class of failure above, scanned together for the key.
    outputs = []
    for quirk in ("results-null-row", "list-no-jobs", "results-wrong-types"):
        with fast_sandbox() as server:
            server.seed_jobs("validate", 3)
            server.set_quirks(quirk)
            run = run_tap_in_process(tap_settings(server), monkeypatch)
            outputs.append(json.dumps(run.messages) + run.log + repr(run.error))
    assert len(outputs) == 3
    assert all(TEST_API_KEY not in text for text in outputs)
