"""The incremental contract of the tap, shown with exact record and request counts."""

from __future__ import annotations

import json
from collections import Counter

from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tests.helpers.keys import API_KEY
from tests.helpers.sandboxes import LIST, RESULTS
from tests.helpers.tap_runs import run_tap


def result_keys(run) -> list[tuple[str, int]]:
    return [(row["job_id"], row["row_number"]) for row in run.records("job_results")]


def test_first_run_emits_every_job_and_the_results_of_completed_ones(sandbox, tap_config, tmp_path):
    validate_ids = sandbox.seed_jobs("validate", 1500, jobs=2)
    find_ids = sandbox.seed_jobs("find", 7)
    failed_ids = sandbox.seed_jobs("validate", 10, status="failed")
    tap_config["results_per_page"] = 1000

    run = run_tap(tmp_path, tap_config)

    assert run.returncode == 0, run.stderr
    jobs = {job["id"]: job for job in run.records("jobs")}
    assert set(jobs) == {*validate_ids, *find_ids, *failed_ids}
    assert jobs[failed_ids[0]]["status"] == "failed"
    assert jobs[failed_ids[0]]["error"]
    keys = result_keys(run)
    # The failed job's processed rows were charged: they are extracted too.
    processed = jobs[failed_ids[0]]["completed"]
    assert 0 <= processed < 10
    assert jobs[failed_ids[0]]["results_error"] is None
    assert len(keys) == len(set(keys)) == 1500 * 2 + 7 + processed
    for job_id, total in [(validate_ids[0], 1500), (validate_ids[1], 1500), (find_ids[0], 7),
                          (failed_ids[0], processed)]:
        assert sorted(n for j, n in keys if j == job_id) == list(range(1, total + 1))
    # 2 pages for each 1,500-row job, 1 for the find job; for the failed job, one row
    # asked to see whether GTMCLI serves its results, then its page.
    assert sandbox.stats()["requests"] == {LIST: 1, RESULTS: 5 + (2 if processed else 0)}
    assert "page 2 of 2, 1500 rows" in run.stderr


def test_results_carry_every_documented_field(sandbox, tap_config, tmp_path):
    validate_id = sandbox.create_job("validate", [{"email": "info@gmail.com"}])["id"]
    find_id = sandbox.create_job(
        "find", [{"first_name": "Tim", "last_name": "Cook", "domain": "apple.com"}]
    )["id"]
    sandbox.advance_clock(5)

    run = run_tap(tmp_path, tap_config)

    rows = {row["job_id"]: row for row in run.records("job_results")}
    truth = {validate_id: sandbox.job_items(validate_id), find_id: sandbox.job_items(find_id)}
    assert rows[validate_id]["job_type"] == "validate"
    assert rows[validate_id]["email"] == truth[validate_id][0]["email"]
    assert {"status", "provider", "sub_status", "domain_info"} <= set(rows[validate_id])
    assert rows[find_id]["job_type"] == "find"
    assert {"status", "email", "convention", "confidence", "provider"} <= set(rows[find_id])


def test_second_run_emits_only_new_and_changed_jobs_and_never_rereads_results(tmp_path):
    config = SandboxConfig(api_key=API_KEY, start_delay=60, processing_rate=0)
    with SandboxServer(config) as sandbox:
        done_id = sandbox.seed_jobs("validate", 20)[0]
        sandbox.advance_clock(1)
        pending_id = sandbox.create_job("validate", [{"email": f"p{i}@example.com"} for i in range(5)])["id"]
        tap_config = {"api_key": API_KEY, "api_url": sandbox.url}

        first = run_tap(tmp_path, tap_config)
        assert {job["id"]: job["status"] for job in first.records("jobs")} == {
            done_id: "completed", pending_id: "pending",
        }
        assert len(first.records("job_results")) == 20
        assert list(first.last_state["bookmarks"]["jobs"]["open_jobs"]) == [pending_id]

        sandbox.advance_clock(120)  # the pending job completes
        new_id = sandbox.seed_jobs("find", 3)[0]
        sandbox.reset_stats()
        second = run_tap(tmp_path, tap_config, state=first.last_state)

        assert second.returncode == 0, second.stderr
        assert [(job["id"], job["status"]) for job in second.records("jobs")] == [
            (pending_id, "completed"), (new_id, "completed"),
        ]
        assert Counter(row["job_id"] for row in second.records("job_results")) == {
            pending_id: 5, new_id: 3,
        }
        assert sandbox.stats()["requests"] == {LIST: 1, RESULTS: 2}
        assert second.last_state["bookmarks"]["jobs"]["open_jobs"] == {}

        sandbox.reset_stats()
        third = run_tap(tmp_path, tap_config, state=second.last_state)
        assert third.records("jobs") == [] and third.records("job_results") == []
        assert sandbox.stats()["requests"] == {LIST: 1}


def seed_spread(sandbox: SandboxServer, count: int, apart: float = 0.2) -> list[str]:
    """Jobs `apart` seconds apart, as a real account accumulates them (1,000 of them
    stay within the tap's allowed clock skew: the sandbox's clock only moves ahead)."""
    ids = []
    for _ in range(count):
        ids += sandbox.seed_jobs("validate", 1)
        sandbox.advance_clock(apart)
    return ids


def test_nothing_new_after_1000_finished_jobs_costs_one_list_request(sandbox, tap_config, tmp_path):
    seed_spread(sandbox, 1000)
    first = run_tap(tmp_path, tap_config, timeout=300)
    assert first.returncode == 0, first.stderr
    assert len(first.records("jobs")) == 1000
    state = first.last_state
    # State stays small: no per-job entries for finished jobs.
    assert state["bookmarks"]["jobs"]["open_jobs"] == {}
    assert len(json.dumps(state)) < 400

    sandbox.reset_stats()
    again = run_tap(tmp_path, tap_config, state=state)
    assert again.returncode == 0, again.stderr
    assert again.records("jobs") == [] and again.records("job_results") == []
    assert sandbox.stats()["requests"] == {LIST: 1}


def test_paginated_list_stops_once_no_older_job_can_change(tmp_path):
    config = SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0, list_page_size=10)
    with SandboxServer(config) as sandbox:
        seed_spread(sandbox, 45)
        tap_config = {"api_key": API_KEY, "api_url": sandbox.url}
        first = run_tap(tmp_path, tap_config)
        assert len(first.records("jobs")) == 45
        assert sandbox.stats()["requests"][LIST] == 5  # every page of the first run

        new_ids = seed_spread(sandbox, 12)
        sandbox.reset_stats()
        second = run_tap(tmp_path, tap_config, state=first.last_state)
        assert [job["id"] for job in second.records("jobs")] == new_ids
        # Page 1 holds 10 new jobs, page 2 the other 2 and then settled history.
        assert sandbox.stats()["requests"] == {LIST: 2, RESULTS: 12}


def test_start_date_and_job_types_limit_what_is_extracted(sandbox, tap_config, tmp_path):
    sandbox.seed_jobs("validate", 2)
    sandbox.advance_clock(3600)
    find_id = sandbox.seed_jobs("find", 2)[0]
    validate_id = sandbox.seed_jobs("validate", 2)[0]
    start = sandbox.get_job(find_id)["created_at"]

    run = run_tap(tmp_path, {**tap_config, "start_date": start})
    assert {job["id"] for job in run.records("jobs")} == {find_id, validate_id}

    only_find = run_tap(tmp_path, {**tap_config, "job_types": ["find"]})
    assert [job["id"] for job in only_find.records("jobs")] == [find_id]
    assert {row["job_id"] for row in only_find.records("job_results")} == {find_id}


def test_job_vanishing_before_its_results_is_skipped_with_a_warning(sandbox, tap_config, tmp_path):
    gone_id, kept_id = sandbox.seed_jobs("validate", 3, jobs=2)
    sandbox.add_fault_rules([{"method": "GET", "path_prefix": f"/v1/jobs/{gone_id}/results",
                              "status": 404, "count": 1}])
    run = run_tap(tmp_path, tap_config)
    assert run.returncode == 0, run.stderr
    assert {row["job_id"] for row in run.records("job_results")} == {kept_id}
    assert f"Job {gone_id} vanished (404)" in run.stderr


def test_unknown_api_fields_are_kept_in_additional_fields(caplog):
    from tap_gtmcli.tap.tap import TapGTMCLI

    tap = TapGTMCLI(config={"api_key": API_KEY}, setup_mapper=False)
    jobs = tap.streams["jobs"]
    record = {"id": "job_x", "status": "completed", "priority": "high"}
    assert jobs.fold_unknown_fields(record) == {
        "id": "job_x", "status": "completed", "additional_fields": {"priority": "high"},
    }
    assert "does not know yet on 'jobs': priority" in caplog.text
