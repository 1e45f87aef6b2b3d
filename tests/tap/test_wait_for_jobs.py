"""`wait_for_jobs`: the tap console script against a sandbox whose jobs take time.

Jobs are created with a start delay of an hour, so none moves until a test pushes the
sandbox clock, at the moment it chooses (when the tap has emitted every job and begun
to wait). From then on they process at `RATE` items per second of real time (the
slow sandbox of tests/helpers/sandboxes.py).
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest

from tap_gtmcli.tap.job_waiter import PollSchedule
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.sandboxes import (
    LIST,
    ONE_JOB,
    RESULTS,
    create_jobs,
    result_truth,
    slow_sandbox_server,
    start_jobs,
)
from tests.helpers.singer import TapRun
from tests.helpers.tap_runs import WAIT_SETTINGS, Watcher, run_tap, run_tap_watched

CHECKS = re.compile(r"stopped waiting after ([\d.]+) s and (\d+) checks?:")


def is_record(message: dict[str, Any], stream: str) -> bool:
    return message["type"] == "RECORD" and message["stream"] == stream


def when_waiting(job_count: int, action: Callable[[], str | None]) -> Watcher:
    """Calls `action` once, at the STATE after the tap has emitted all `job_count` jobs
    (each was pending, so the tap now waits for them)."""
    done = []

    def watch(message: dict[str, Any], messages: list[dict[str, Any]]) -> str | None:
        if done or message["type"] != "STATE":
            return None
        emitted = {m["record"]["id"] for m in messages if is_record(m, "jobs")}
        if len(emitted) < job_count:
            return None
        done.append(True)
        return action()

    return watch


def job_spans_after_the_wait(messages: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(job id, position of its first message, of its completed row) of each job emitted
    once finished, in the order emitted; a job's messages are its result rows and the
    completed row, and no other job's message falls between them."""
    spans: dict[str, list[int]] = {}
    for position, message in enumerate(messages):
        if message["type"] != "RECORD":
            continue
        record = message["record"]
        if message["stream"] == "job_results":
            spans.setdefault(record["job_id"], [position, -1])
        elif record["status"] == "completed":
            spans.setdefault(record["id"], [position, -1])[1] = position
    ordered = sorted((first, completed, job_id) for job_id, (first, completed) in spans.items())
    for (_, completed, job_id), (next_first, _, _) in pairwise(ordered):
        assert completed < next_first, f"{job_id}'s messages interleave with the next job's"
    return [(job_id, first, completed) for first, completed, job_id in ordered]


def checks_made(run: TapRun) -> int:
    (match,) = CHECKS.findall(run.stderr)
    return int(match[1])


def seconds_waited(run: TapRun) -> float:
    (match,) = CHECKS.findall(run.stderr)
    return float(match[0])


def checks_that_fit(seconds: float, first: float, longest: float) -> int:
    """The most checks a wait of `seconds` holds when the pause before each is `first`,
    then 1.5 times the one before, up to `longest` (README "wait_for_jobs")."""
    checks, elapsed, pause = 0, 0.0, first
    while elapsed + pause <= seconds + 0.05:  # the reported seconds are rounded to 0.1
        elapsed += pause
        checks += 1
        pause = min(pause * 1.5, longest)
    return checks


def test_one_run_collects_each_job_as_it_finishes(slow_sandbox, tmp_path):
    sizes = [300, 800, 10_000]  # the last one takes 5 s, the others are done by then
    job_ids = create_jobs(slow_sandbox, sizes)
    config = {"api_key": API_KEY, "api_url": slow_sandbox.url, "wait_for_jobs": 60,
              **WAIT_SETTINGS}

    run = run_tap_watched(tmp_path, config, when_waiting(
        3, lambda: start_jobs(slow_sandbox)))

    assert run.returncode == 0, run.stderr
    assert_no_key(run.stdout, run.stderr)
    assert [(job["id"], job["status"]) for job in run.records("jobs")] == [
        *[(job_id, "pending") for job_id in job_ids],
        *[(job_id, "completed") for job_id in job_ids],
    ]
    keys = run.result_keys
    assert len(keys) == len(set(keys)) and set(keys) == result_truth(slow_sandbox, job_ids)
    emails = [row["email"] for row in run.records("job_results") if row["job_id"] == job_ids[2]]
    assert emails == [item["email"] for item in slow_sandbox.job_items(job_ids[2])]
    # The small jobs' rows were out before the big job finished, not after it.
    position = {id(m): n for n, m in enumerate(run.messages)}
    last_small_row = max(position[id(m)] for m in run.messages if m["type"] == "RECORD"
                         and m["stream"] == "job_results" and m["record"]["job_id"] != job_ids[2])
    big_completed = next(position[id(m)] for m in run.messages if m["type"] == "RECORD"
                         and m["stream"] == "jobs" and m["record"]["id"] == job_ids[2]
                         and m["record"]["status"] == "completed")
    assert last_small_row < big_completed
    # Each job completed during the wait is emitted whole (its result rows, then its
    # completed row), then settled by a STATE before the next job's first message.
    spans = job_spans_after_the_wait(run.messages)
    assert [job_id for job_id, _, _ in spans] == job_ids  # they finished in this order
    for (job_id, _, completed), (_, next_first, _) in zip(
            spans, [*spans[1:], (None, len(run.messages), None)], strict=False):
        settling = [m["value"] for m in run.messages[completed + 1:next_first]
                    if m["type"] == "STATE"
                    and job_id not in m["value"]["bookmarks"]["jobs"]["open_jobs"]]
        assert settling, f"no STATE settles {job_id} before the next job"
    assert all(first < completed for _, first, completed in spans)
    assert run.last_state["bookmarks"]["jobs"]["open_jobs"] == {}
    # One request per check: the list while several jobs were open, then the job itself.
    requests = slow_sandbox.stats()["requests"]
    checks = checks_made(run)
    assert requests[LIST] + requests.get(ONE_JOB, 0) == 1 + checks
    # The checks keep the documented schedule over the wait the run reports (pauses of
    # 0.2 s growing 1.5 times to 1 s), not the bound of the whole 60 s wait_for_jobs.
    # (Polling every 0.2 s would make twice the checks or more.)
    assert 1 <= checks <= checks_that_fit(seconds_waited(run), first=0.2, longest=1.0)
    assert requests[RESULTS] == 1 + 2 + 20  # pages of 500 rows
    assert re.search(r"waiting for \d jobs?: [\d,]+ of [\d,]+ items done, next check in", run.stderr)


def test_time_up_exits_0_keeps_open_jobs_and_the_next_run_completes_them(slow_sandbox, tmp_path):
    quick, slow = create_jobs(slow_sandbox, [400, 40_000])  # slow: 20 s once started
    config = {"api_key": API_KEY, "api_url": slow_sandbox.url, "wait_for_jobs": 3,
              **WAIT_SETTINGS}

    first = run_tap_watched(tmp_path, config, when_waiting(
        2, lambda: start_jobs(slow_sandbox)))

    assert first.returncode == 0, first.stderr
    assert_no_key(first.stdout, first.stderr)
    warning = re.search(r"wait_for_jobs \(3 s\) is up with 1 job still unfinished, ([\d,]+) of "
                        r"40,000 items not yet processed; they stay open in state", first.stderr)
    assert warning, first.stderr
    open_jobs = first.last_state["bookmarks"]["jobs"]["open_jobs"]
    assert list(open_jobs) == [slow] and open_jobs[slow]["status"] == "processing"
    # Its latest progress was emitted before the run ended, and no result of it.
    assert first.records("jobs")[-1]["id"] == slow
    assert first.records("jobs")[-1]["completed"] == open_jobs[slow]["completed"] > 0
    assert {job_id for job_id, _ in first.result_keys} == {quick}
    # Once only `slow` was open, each check was one GET /v1/jobs/{id}.
    requests = slow_sandbox.stats()["requests"]
    checks = checks_made(first)
    assert requests[LIST] + requests[ONE_JOB] == 1 + checks
    assert checks <= PollSchedule(0.2, 1.0).max_checks(3)

    slow_sandbox.advance_clock(60)  # `slow` completes
    second = run_tap(tmp_path, config, state=first.last_state)

    assert second.returncode == 0, second.stderr
    assert_no_key(second.stdout, second.stderr)
    assert [(job["id"], job["status"]) for job in second.records("jobs")] == [(slow, "completed")]
    emitted = first.result_keys + second.result_keys
    assert Counter(emitted).most_common(1)[0][1] == 1, "a result row was emitted twice"
    assert set(emitted) == result_truth(slow_sandbox, [quick, slow])
    assert second.last_state["bookmarks"]["jobs"]["open_jobs"] == {}
    assert "waiting up to" not in second.stderr  # nothing was left to wait for


def test_a_job_that_fails_while_waited_for_is_emitted_with_its_error(slow_sandbox, tmp_path):
    ok_first, failing, ok_last = create_jobs(slow_sandbox, [200, 4000, 4000])

    def start_then_fail_one() -> None:
        start_jobs(slow_sandbox)
        slow_sandbox.fail_job(failing, "mailbox provider unreachable")

    config = {"api_key": API_KEY, "api_url": slow_sandbox.url, "wait_for_jobs": 60,
              **WAIT_SETTINGS}
    run = run_tap_watched(tmp_path, config, when_waiting(3, start_then_fail_one))

    assert run.returncode == 0, run.stderr
    assert_no_key(run.stdout, run.stderr)
    final = {job["id"]: job for job in run.records("jobs") if job["status"] != "pending"}
    assert final[failing]["status"] == "failed"
    assert final[failing]["error"] == "mailbox provider unreachable"
    assert final[ok_first]["status"] == final[ok_last]["status"] == "completed"
    keys = run.result_keys
    # The rows the failed job processed before it failed were charged: they are read too.
    processed = final[failing]["completed"]
    assert processed == slow_sandbox.get_job(failing)["completed"]
    failed_rows = {(failing, n) for n in range(1, processed + 1)}
    assert len(keys) == len(set(keys))
    assert set(keys) == result_truth(slow_sandbox, [ok_first, ok_last]) | failed_rows
    assert run.last_state["bookmarks"]["jobs"]["open_jobs"] == {}


@pytest.mark.parametrize("kill_at", ["wait begins", 700, 2600, 7100])
def test_sigkill_during_the_wait_then_resume_loses_no_row(tmp_path, kill_at):
    sizes = [1000, 2000, 3000, 4000]  # the first two done at the first check, then 1 and 2 s
    with slow_sandbox_server() as sandbox:
        job_ids = create_jobs(sandbox, sizes)
        config = {"api_key": API_KEY, "api_url": sandbox.url, "wait_for_jobs": 60,
                  **WAIT_SETTINGS}
        on_waiting = when_waiting(4, lambda: start_jobs(sandbox)
                                  or ("kill" if kill_at == "wait begins" else None))

        rows = Counter[str]()

        def watch(message: dict[str, Any], messages: list[dict[str, Any]]) -> str | None:
            if on_waiting(message, messages) == "kill":
                return "kill"
            if is_record(message, "job_results"):
                rows["seen"] += 1
                return "kill" if rows["seen"] == kill_at else None
            return None

        killed = run_tap_watched(tmp_path, config, watch)
        assert killed.returncode == -signal.SIGKILL
        resumed = run_tap(tmp_path, config, state=killed.last_state)

        assert resumed.returncode == 0, resumed.stderr
        assert_no_key(killed.stdout, killed.stderr, resumed.stdout, resumed.stderr)
        emitted = killed.result_keys + resumed.result_keys
        assert result_truth(sandbox, job_ids) - set(emitted) == set(), (
            f"rows lost (killed at {kill_at})"
        )
        assert set(emitted) <= result_truth(sandbox, job_ids)
        # Resuming redoes at most the job whose rows were being emitted at the kill.
        assert len(emitted) - len(set(emitted)) <= max(sizes)
        assert resumed.last_state["bookmarks"]["jobs"]["open_jobs"] == {}


def test_a_429_on_a_check_is_retried_after_its_retry_after(slow_sandbox, tmp_path):
    (job_id,) = create_jobs(slow_sandbox, [500])

    def start_behind_a_rate_limit() -> None:
        slow_sandbox.add_fault_rules([{"method": "GET", "path_prefix": f"/v1/jobs/{job_id}",
                                       "status": 429, "count": 2, "retry_after": "1"}])
        start_jobs(slow_sandbox)

    config = {"api_key": API_KEY, "api_url": slow_sandbox.url, "wait_for_jobs": 60,
              **WAIT_SETTINGS}
    run = run_tap_watched(tmp_path, config, when_waiting(1, start_behind_a_rate_limit))

    assert run.returncode == 0, run.stderr
    assert_no_key(run.stdout, run.stderr)
    assert re.findall(r"Retry (\d) of 5 for /v1/jobs in (\S+) s", run.stderr) == [
        ("1", "1.00"), ("2", "1.00"),
    ]
    stats = slow_sandbox.stats()
    assert stats["rate_limited"] == 2
    # The first check took 3 requests (2 answered 429); each check is one job request.
    assert stats["requests"][ONE_JOB] == checks_made(run) + 2
    assert set(run.result_keys) == result_truth(slow_sandbox, [job_id])


def test_poll_intervals_that_cannot_work_fail_before_any_request(slow_sandbox, tmp_path):
    create_jobs(slow_sandbox, [10])
    config = {"api_key": API_KEY, "api_url": slow_sandbox.url, "wait_for_jobs": 60,
              "poll_interval": 30, "poll_interval_max": 10}

    run = run_tap(tmp_path, config)

    assert run.returncode != 0
    assert_no_key(run.stdout, run.stderr)
    assert "poll_interval_max (10 s) must not be below poll_interval (30 s)" in run.stderr
    assert slow_sandbox.stats()["requests"] == {}


def test_a_job_deleted_while_waited_for_is_forgotten(slow_sandbox, tmp_path):
    (deleted,) = create_jobs(slow_sandbox, [300])
    config = {"api_key": API_KEY, "api_url": slow_sandbox.url, "wait_for_jobs": 30,
              **WAIT_SETTINGS}

    run = run_tap_watched(tmp_path, config, when_waiting(
        1, lambda: slow_sandbox.delete_job(deleted) and None))

    assert run.returncode == 0, run.stderr
    assert_no_key(run.stdout, run.stderr)
    # Its one check was GET /v1/jobs/{id}, answered 404.
    assert slow_sandbox.stats()["requests"] == {LIST: 1, ONE_JOB: 1}
    assert f"Job {deleted} is no longer known to GTMCLI; forgetting it" in run.stderr
    assert run.records("job_results") == []
    assert run.last_state["bookmarks"]["jobs"]["open_jobs"] == {}


def test_a_job_created_while_the_tap_waits_is_left_to_the_next_run(slow_sandbox, tmp_path):
    """README: jobs created after the run read the job list are not waited for."""
    [first] = create_jobs(slow_sandbox, [300])
    late: list[str] = []

    def start_and_create_another() -> None:
        start_jobs(slow_sandbox)  # `first` finishes in 0.15 s; the late job in an hour
        late.append(slow_sandbox.create_job("validate", [{"email": "late@x.example.com"}])["id"])

    config = {"api_key": API_KEY, "api_url": slow_sandbox.url, "wait_for_jobs": 60,
              **WAIT_SETTINGS}
    run = run_tap_watched(tmp_path, config, when_waiting(1, start_and_create_another))

    assert run.returncode == 0, run.stderr
    assert [(job["id"], job["status"]) for job in run.records("jobs")] == [
        (first, "pending"), (first, "completed")]
    assert re.search(r"stopped waiting after [\d.]+ s and \d+ checks?: 1 finished, 0 still open",
                     run.stderr), run.stderr
    assert run.last_state is not None
    assert run.last_state["bookmarks"]["jobs"]["open_jobs"] == {}
    # The next run finds it as a new job.
    rerun = run_tap(tmp_path, {**config, "wait_for_jobs": 0}, state=run.last_state)
    assert rerun.returncode == 0, rerun.stderr
    assert [(job["id"], job["status"]) for job in rerun.records("jobs")] == [
        (late[0], "pending")]
