"""The tap's gaps in the matrix (tests/tap/ covers single faults): storms, exhausted
retries followed by a rerun, answers lost after the server worked, failed and vanishing
jobs, and a random-fault soak. Every run is checked row by row against the sandbox."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.helpers.key_scan import assert_no_key
from tests.helpers.sandboxes import fast_sandbox, sandbox_jobs, seeded_truth
from tests.helpers.tap_runs import run_tap, run_tap_in_process, tap_settings

RESULTS = {"method": "GET", "path_prefix": "/v1/jobs/job_"}
LIST = {"method": "GET", "path_prefix": "/v1/jobs"}
PASS = {"status": 200, "body": "slow", "delay": 0}  # a rule that lets one request through


def assert_rows_exact(keys: list[tuple[str, int]], truth: set[tuple[str, int]]) -> None:
    counted = Counter(keys)
    assert set(counted) == truth, (
        f"missing {len(truth - set(counted))}, unexpected {len(set(counted) - truth)}"
    )
    assert max(counted.values(), default=1) == 1, "a row was emitted twice"


@pytest.mark.parametrize("retry_after", ["0", None])
def test_429_storm_on_every_endpoint_is_ridden_out(monkeypatch, retry_after):
    with fast_sandbox() as server:
        server.seed_jobs("validate", 1500, jobs=2)
        truth = seeded_truth(server)
        rule = {"status": 429, "count": 4, **({"retry_after": retry_after} if retry_after else {})}
        server.add_fault_rules([{**LIST, **rule}, {**RESULTS, **rule}])
        run = run_tap_in_process(tap_settings(server, max_retries=4, results_per_page=500),
                                 monkeypatch)
        assert run.ok, repr(run.error)
        assert_rows_exact(run.result_keys, truth)
        assert len(run.sleeps) == 8
        if retry_after == "0":
            assert run.sleeps == [0.0] * 8
        assert server.stats()["rate_limited"] == 8
        assert_no_key(run.messages, run.log)


@pytest.mark.parametrize(
    ("fault", "named"),
    [
        # A 429 naming its wait is waited out for max_rate_limit_wait, not max_retries.
        ({"status": 429, "retry_after": "5"}, r"still rate limited \(429\)"),
        ({"status": 503}, r"answered 503"),
        ({"status": 502, "body": "html"}, r"answered 502 \(non-JSON body\)"),
    ],
    ids=["429-storm", "503-burst", "html-502"],
)
def test_exhausted_retries_mid_extraction_fail_naming_endpoint_then_rerun_is_exact(
    tmp_path, fault, named
):
    with fast_sandbox() as server:
        for _ in range(3):
            server.seed_jobs("validate", 700)
            server.advance_clock(1)
        truth = seeded_truth(server)
        # Two results pages go through, then the endpoint fails more often than retried:
        # the 4 pages left are requested together (read ahead across jobs), so every one
        # of their 2 tries fails.
        server.add_fault_rules([{**RESULTS, **PASS, "count": 2}, {**RESULTS, **fault, "count": 8}])
        first = run_tap(tmp_path, tap_settings(server, max_retries=1, results_per_page=500,
                                               max_rate_limit_wait=1))
        assert first.returncode != 0
        assert re.search(r"GET /v1/jobs/job_\w+/results:? " + named, first.stderr), (
            first.stderr[-2000:]
        )
        server.clear_fault_rules()
        rerun = run_tap(tmp_path, tap_settings(server, results_per_page=500),
                        state=first.last_state)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        keys = first.result_keys + rerun.result_keys
        assert set(keys) == truth  # nothing lost
        # At-least-once: only the job in flight when the run failed is emitted again.
        assert len(keys) - len(set(keys)) <= 700
        assert_no_key(first.stderr, first.messages, rerun.messages, rerun.stderr)


def test_a_job_failing_for_good_ends_the_run_without_waiting_out_other_retries(tmp_path):
    """Pages of later jobs, read ahead, are answered 503 with Retry-After: 600 while the
    oldest job's results fail for good: the run fails at once, naming that job, and
    sends no retry of the other pages (their workers stop sleeping when it fails)."""
    with fast_sandbox() as server:
        failing = server.seed_jobs("validate", 300)[0]
        server.advance_clock(1)
        later = server.seed_jobs("validate", 300, jobs=3)
        rules = [{"method": "GET", "path_prefix": f"/v1/jobs/{job_id}/results",
                  "status": 503, "retry_after": "600", "count": 2} for job_id in later]
        # The failing job's two tries are 2 s apart: the later pages, sent beside its
        # first, are answered by then and their workers sleeping out 600 s.
        server.add_fault_rules([{"method": "GET", "path_prefix": f"/v1/jobs/{failing}/results",
                                 "status": 503, "retry_after": "2", "count": 2}, *rules])
        # timeout: a guard against a hang only; a run that waited would take 600 s.
        run = run_tap(tmp_path, tap_settings(server, max_retries=1, results_per_page=500),
                      timeout=60)
        assert run.returncode != 0
        assert f"GET /v1/jobs/{failing}/results answered 503" in run.stderr, run.stderr[-2000:]
        assert "in 600.00 s" in run.stderr  # a later page's worker was sleeping it out
        left = {rule["path_prefix"]: rule["count"] for rule in server.faults()["rules"]}
        # Each later page was requested at most once: no retry after the run failed.
        assert all(left[rule["path_prefix"]] >= 1 for rule in rules), left
        assert server.stats()["requests"]["GET /v1/jobs/{id}/results"] <= 2 + len(later)
        assert run.result_keys == []
        assert_no_key(run.stderr, run.messages)


@pytest.mark.parametrize("body", ["drop_after", "truncated", "drop"])
def test_answer_lost_after_the_server_worked_is_retried_exactly(monkeypatch, body):
    with fast_sandbox() as server:
        server.seed_jobs("find", 1200, jobs=2)
        truth = seeded_truth(server)
        server.add_fault_rules([{**RESULTS, "body": body, "count": 3},
                                {**LIST, "body": body, "count": 1}])
        run = run_tap_in_process(tap_settings(server, max_retries=3, results_per_page=400),
                                 monkeypatch)
        assert run.ok, repr(run.error)
        assert_rows_exact(run.result_keys, truth)


def test_slow_list_answer_times_out_and_is_retried(monkeypatch):
    with fast_sandbox() as server:
        server.seed_jobs("validate", 300, jobs=2)
        truth = seeded_truth(server)
        server.add_fault_rules([{**LIST, "body": "slow", "delay": 2.5, "count": 1}])
        run = run_tap_in_process(tap_settings(server, request_timeout=1), monkeypatch)
        assert run.ok, repr(run.error)
        assert_rows_exact(run.result_keys, truth)
        assert len(run.sleeps) == 1


def test_failed_jobs_are_emitted_with_their_error_and_their_processed_rows(tmp_path):
    with fast_sandbox() as server:
        completed = server.seed_jobs("validate", 400, jobs=2)
        failed = server.seed_jobs("validate", 400, jobs=2, status="failed")
        truth = seeded_truth(server)
        run = run_tap(tmp_path, tap_settings(server))
        assert run.returncode == 0, run.stderr[-2000:]
        jobs = {record["id"]: record for record in run.records("jobs")}
        assert set(jobs) == set(completed) | set(failed)
        for job_id in failed:
            assert jobs[job_id]["status"] == "failed" and jobs[job_id]["error"]
        # A failed job's processed rows were charged: they are extracted too.
        processed = {(job_id, n) for job_id in failed
                     for n in range(1, jobs[job_id]["completed"] + 1)}
        assert_rows_exact(run.result_keys, truth | processed)
        # One page per job read, and one row asked of each failed job with rows first.
        with_rows = sum(1 for job_id in failed if jobs[job_id]["completed"])
        assert server.stats()["requests"]["GET /v1/jobs/{id}/results"] == (
            len(completed) + 2 * with_rows)
        assert_no_key(run.stderr, run.messages)


def test_job_vanishing_between_results_pages_is_skipped_and_the_rest_is_exact(tmp_path):
    with fast_sandbox() as server:
        gone = server.seed_jobs("validate", 2500)[0]
        server.advance_clock(1)
        kept = server.seed_jobs("validate", 1200)[0]
        truth = seeded_truth(server)
        prefix = f"/v1/jobs/{gone}/results"
        server.add_fault_rules([{"method": "GET", "path_prefix": prefix, **PASS, "count": 1},
                                {"method": "GET", "path_prefix": prefix, "status": 404,
                                 "count": 10}])
        run = run_tap(tmp_path, tap_settings(server, results_per_page=1000))
        assert run.returncode == 0, run.stderr[-2000:]
        assert f"Job {gone} vanished (404)" in run.stderr
        counted = Counter(run.result_keys)
        assert max(counted.values()) == 1
        assert {key for key in counted if key[0] == kept} == {k for k in truth if k[0] == kept}
        assert {key for key in counted if key[0] == gone} <= truth
        assert_no_key(run.stderr, run.messages)


def test_random_fault_soak_tap_exact_truth(monkeypatch):
    with fast_sandbox(list_page_size=3) as server:
        for job_type in ("validate", "find", "validate", "find"):
            server.seed_jobs(job_type, 900, jobs=2)
            server.advance_clock(1)
        truth = seeded_truth(server)
        assert len(sandbox_jobs(server)) == 8
        server.set_faults(error_share=0.2, drop_share=0.05, truncate_share=0.05, fault_seed=7)
        run = run_tap_in_process(tap_settings(server, max_retries=12, results_per_page=200),
                                 monkeypatch)
        server.set_faults(error_share=0, drop_share=0, truncate_share=0)
        assert run.ok, repr(run.error)
        assert_rows_exact(run.result_keys, truth)
        stats = server.stats()
        assert stats["errors_injected"] > 5 and stats["dropped"] > 0 and stats["truncated"] > 0
        assert len({r["id"] for r in run.records("jobs")}) == 8
        assert_no_key(run.messages, run.log)
