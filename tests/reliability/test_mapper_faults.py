"""The mapper (submit and enrich modes) against every fault of the matrix.

Each run either completes with exactly the truth (the sandbox received every distinct
submittable item of the input once, passthrough complete and in order, STATE last), or
stops non-zero naming the endpoint and cause with no STATE past unsubmitted records,
after which a rerun from the last emitted STATE completes with exactly the truth.
"""

from __future__ import annotations

import email.utils
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.retry import RetryPolicy
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.mapper_runs import (
    LEDGER,
    mapper_settings,
    run_mapper_cli,
    run_mapper_in_process,
    run_plugin,
)
from tests.helpers.sandboxes import fast_sandbox, received_items, received_jobs, sandbox_jobs
from tests.helpers.singer import MapperRun
from tests.helpers.submit_oracle import contacts_input, mapper_truth, replay_after, state_position

RECORDS = 30
BATCH = 10  # three jobs; a STATE after every batch, so a rerun from it is exact
POST = {"method": "POST", "path_prefix": "/v1/jobs"}
ENRICH = {"mode": "enrich", "poll_interval": 0.01, "max_wait": 5}


def fired(fault: dict) -> tuple[str, int]:
    """The sandbox counter a scripted fault bumps each time it fires, and how often it must."""
    body, status = fault.get("body", "json"), fault.get("status", 500)
    if body in ("drop", "drop_after"):
        return "dropped", fault["count"]
    if body == "truncated":
        return "truncated", fault["count"]
    if body == "slow":
        return "slowed", fault["count"]
    return ("rate_limited" if status == 429 else "errors_injected"), fault["count"]


def assert_fired(server: Any, fault: dict) -> None:
    counter, times = fired(fault)
    assert server.stats()[counter] == times, f"{counter}: {server.stats()}"
    assert server.faults()["rules"] == [], "a scripted fault never fired"


def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> float:
    """Freeze the clock `Retry-After` dates are read against at a whole second."""
    now = float(int(time.time()))
    monkeypatch.setattr("tap_gtmcli.api.retry.time", SimpleNamespace(time=lambda: now))
    return now


def upstream_of(run: MapperRun) -> list[dict]:
    return [m for m in run.messages
            if m.get("stream") not in (LEDGER, "gtmcli_rejected") or m["type"] == "STATE"]


def assert_exact_truth(server: Any, messages: list[dict], runs: list[MapperRun]) -> None:
    """The sandbox holds every distinct submittable item once; passthrough complete."""
    truth = mapper_truth(messages, BATCH)
    received = Counter(received_items(server))
    assert received == truth.items, (
        f"missing {truth.items - received}, extra {received - truth.items}"
    )
    assert sorted(received_jobs(server)) == sorted(truth.jobs)
    passed = {m["record"]["id"] for run in runs for m in run.of("contacts")}
    assert passed == {m["record"]["id"] for m in messages if m["type"] == "RECORD"}
    ledger = [row for run in runs for row in run.records(LEDGER)]
    assert len({row["job_id"] for row in ledger}) == len(truth.jobs) == len(ledger)
    assert runs[-1].ok and runs[-1].last_state == messages[-1]["value"]
    for run in runs:
        assert_no_key(run.messages, run.log, run.stderr, repr(run.error))


def completes_exactly(server: Any, config: dict, messages: list[dict] | None = None) -> MapperRun:
    messages = messages or contacts_input(RECORDS, BATCH)
    run = run_mapper_in_process(config, messages)
    assert run.ok, f"{run.error!r}\n{run.log[-2000:]}"
    if config.get("mode", "submit") == "submit":
        assert upstream_of(run) == messages  # passthrough unchanged, complete, in order
    assert_exact_truth(server, messages, [run])
    return run


# --------------------------------------------------------------------- 429 storms


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", 7.0), ("0", 0.0), (None, None), ("http-date", 30.0)],
    ids=["retry-after-seconds", "retry-after-zero", "no-retry-after", "retry-after-http-date"],
)
def test_429_storm_on_job_create_is_ridden_out(retry_after, expected, monkeypatch) -> None:
    with fast_sandbox() as server:
        # An HTTP date has 1-second resolution: read against a clock frozen at a whole
        # second, a date 30 s ahead must mean exactly 30 s.
        header = (email.utils.formatdate(frozen_clock(monkeypatch) + 30, usegmt=True)
                  if retry_after == "http-date" else retry_after)
        rule = {**POST, "status": 429, "count": 3}
        if header is not None:
            rule["retry_after"] = header
        server.add_fault_rules([rule])
        run = completes_exactly(server, mapper_settings(server, batch_size=BATCH, max_retries=3))
        assert len(run.sleeps) == 3
        for number, wait in enumerate(run.sleeps, start=1):
            if expected is None:
                assert 0.0 <= wait <= 2 ** (number - 1)  # jittered exponential backoff
            else:
                assert wait == expected
        assert server.stats()["requests"]["POST /v1/jobs"] == 3 + 3
        assert server.stats()["rate_limited"] == 3


def test_429_on_reconciliation_and_polling_in_enrich_mode() -> None:
    """The first create's answer is lost, so the mapper looks for the job in
    `GET /v1/jobs` (reconciliation): that list answers 429 twice; later the status
    checks of `GET /v1/jobs/{id}` answer 429 three times. Rules match by path prefix in
    order, so a no-op rule first takes the job-list snapshot made before the first create."""
    with fast_sandbox() as server:
        server.add_fault_rules([
            {"method": "GET", "path_prefix": "/v1/jobs", "body": "slow", "delay": 0,
             "count": 1},
            {**POST, "body": "drop_after", "count": 1},
            {"method": "GET", "path_prefix": "/v1/jobs", "status": 429, "retry_after": "0",
             "count": 2},
            {"method": "GET", "path_prefix": "/v1/jobs/job_", "status": 429,
             "retry_after": "0", "count": 3},
        ])
        messages = contacts_input(RECORDS, BATCH)
        run = run_mapper_in_process(mapper_settings(server, batch_size=BATCH, **ENRICH), messages)
        stats = server.stats()  # before the checks below list the jobs themselves
        assert run.ok, f"{run.error!r}\n{run.log[-2000:]}"
        assert server.faults()["rules"] == []  # every rule fired
        assert stats["rate_limited"] == 2 + 3
        # The snapshot, then the reconciliation's two 429s and the look that found the job.
        assert stats["requests"]["GET /v1/jobs"] == 1 + 2 + 1
        assert stats["requests"]["POST /v1/jobs"] == 3
        assert "adopted job" in run.log
        assert_exact_truth(server, messages, [run])
        enriched = run.records("contacts")
        assert len(enriched) == RECORDS
        assert all(row["gtmcli_job_id"] and row["gtmcli_status"] for row in enriched)


def test_429_storm_longer_than_max_retries_stops_then_rerun_is_exact(tmp_path) -> None:
    messages = contacts_input(RECORDS, BATCH)
    with fast_sandbox() as server:
        config = mapper_settings(server, batch_size=BATCH, max_retries=2)
        # The first job goes through; the second meets a storm of 3 answers, one too many.
        server.add_fault_rules([{**POST, "status": 200, "body": "slow", "delay": 0, "count": 1},
                                {**POST, "status": 429, "retry_after": "0", "count": 3}])
        first = run_mapper_cli(config, messages, tmp_path)
        assert first.returncode == 1
        assert "POST /v1/jobs" in first.stderr and "429" in first.stderr
        assert "Traceback" not in first.stderr
        assert state_position(first.last_state) == BATCH
        rerun = run_mapper_cli(config, replay_after(messages, first.last_state), tmp_path)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert_exact_truth(server, messages, [first, rerun])


# --------------------------------------------------------------------- 5xx, HTML, drops


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500, "body": "json", "count": 3},
        {"status": 503, "body": "json", "count": 2},
        {"status": 502, "body": "html", "count": 3},
        {"body": "drop", "count": 3},
    ],
    ids=["5xx-burst-500", "5xx-burst-503", "html-502-pages", "dropped-connections"],
)
def test_transient_create_failures_create_each_job_exactly_once(fault, monkeypatch) -> None:
    # A create with no answer (dropped, or a proxy's page) is followed by 2 x
    # request_timeout of real time looking for its job; the sandbox lists a job the moment
    # it exists, so a twentieth of that changes no outcome here.
    monkeypatch.setattr("tap_gtmcli.submit.job_creation.GRACE_TIMEOUTS", 0.1)
    with fast_sandbox() as server:
        server.add_fault_rules([{**POST, **fault}])
        completes_exactly(server, mapper_settings(server, batch_size=BATCH))
        assert_fired(server, fault)


@pytest.mark.parametrize("count", [1, 3])
def test_answer_lost_after_the_job_was_created_is_adopted_not_resubmitted(count) -> None:
    with fast_sandbox() as server:
        server.add_fault_rules([{**POST, "body": "drop_after", "count": count}])
        run = completes_exactly(server, mapper_settings(server, batch_size=BATCH))
        assert server.stats()["requests"]["POST /v1/jobs"] == 3
        assert "adopted job" in run.log


def test_truncated_create_answer_is_adopted_not_resubmitted() -> None:
    with fast_sandbox(create_status=200) as server:
        server.add_fault_rules([{**POST, "body": "truncated", "count": 2}])
        completes_exactly(server, mapper_settings(server, batch_size=BATCH))
        assert server.stats()["requests"]["POST /v1/jobs"] == 3


@pytest.mark.parametrize(
    "fault",
    [
        {"method": "GET", "path_prefix": "/v1/jobs/job_", "status": 502, "body": "html",
         "count": 2},
        {"method": "GET", "path_prefix": "/v1/jobs/job_", "body": "drop", "count": 2},
        {"method": "GET", "path_prefix": "/v1/jobs/job_", "body": "truncated", "count": 2},
        {"method": "GET", "path_prefix": "/v1/jobs/job_", "status": 503, "count": 2},
    ],
    ids=["html-502", "drop", "truncated", "503"],
)
def test_enrich_mode_rides_out_faults_on_status_and_results(fault) -> None:
    with fast_sandbox() as server:
        server.add_fault_rules([fault])
        run = completes_exactly(server, mapper_settings(server, batch_size=BATCH, **ENRICH))
        enriched = run.records("contacts")
        assert sorted(row["id"] for row in enriched) == list(range(1, RECORDS + 1))
        assert all(row["gtmcli_email"] == row["email"] for row in enriched)
        assert_fired(server, fault)


def test_5xx_on_every_attempt_stops_naming_endpoint_then_rerun_is_exact(tmp_path) -> None:
    messages = contacts_input(RECORDS, BATCH)
    with fast_sandbox() as server:
        config = mapper_settings(server, batch_size=BATCH, max_retries=1)
        server.add_fault_rules([{**POST, "status": 200, "body": "slow", "delay": 0, "count": 2},
                                {**POST, "status": 503, "count": 10}])
        first = run_mapper_in_process(config, messages)
        assert first.error is not None
        message = str(first.error)
        assert "failed" in message
        assert "POST /v1/jobs answered 503" in message, message
        assert state_position(first.last_state) == 2 * BATCH
        server.clear_fault_rules()
        rerun = run_mapper_in_process(config, replay_after(messages, first.last_state))
        assert rerun.ok, repr(rerun.error)
        assert_exact_truth(server, messages, [first, rerun])


def test_5xx_on_every_create_attempt_names_endpoint_and_status_in_the_final_error() -> None:
    with fast_sandbox() as server:
        server.add_fault_rules([{**POST, "status": 503, "count": 10}])
        run = run_mapper_in_process(mapper_settings(server, batch_size=BATCH, max_retries=1),
                                    contacts_input(RECORDS, BATCH))
        assert run.error is not None and run.states == []
        assert "POST /v1/jobs" in str(run.error) and "503" in str(run.error), str(run.error)


# --------------------------------------------------------------------- slow answers


def test_create_answer_slower_than_request_timeout_creates_each_job_once() -> None:
    """The server is still working on the create when the client gives up: the job
    appears in the list only after the mapper's reconciliation looked."""
    with fast_sandbox() as server:
        server.add_fault_rules([{**POST, "body": "slow", "delay": 2.0, "count": 1}])
        run = run_mapper_in_process(
            mapper_settings(server, batch_size=BATCH, request_timeout=1),
            contacts_input(RECORDS, BATCH),
        )
        time.sleep(2.0)  # let the slow create finish on the server side
        assert run.ok, repr(run.error)
        assert "no whole answer within request_timeout" in run.log  # the fault did happen
        assert_exact_truth(server, contacts_input(RECORDS, BATCH), [run])


def test_status_answer_slower_than_request_timeout_is_retried_in_enrich_mode() -> None:
    with fast_sandbox() as server:
        server.add_fault_rules([{"method": "GET", "path_prefix": "/v1/jobs/job_",
                                 "body": "slow", "delay": 2.0, "count": 1}])
        run = completes_exactly(
            server, mapper_settings(server, batch_size=BATCH, request_timeout=1, **ENRICH)
        )
        assert len(run.sleeps) == 1


# --------------------------------------------------------------------- vanished and failed jobs


class _AfterCreate(GTMCLIClient):
    """A client that does something to the sandbox right after its Nth create."""

    def __init__(self, server: Any, nth: int, action: str) -> None:
        super().__init__(api_url=server.url, api_key=API_KEY, retry=RetryPolicy(max_retries=1),
                         sleep=lambda _s: None)
        self.server, self.nth, self.action, self.creates = server, nth, action, 0

    def create_job(self, *args: Any, **kwargs: Any) -> dict:
        job = super().create_job(*args, **kwargs)
        self.creates += 1
        if self.creates == self.nth:
            if self.action == "delete":
                self.server.delete_job(job["id"])
            else:
                self.server.fail_job(job["id"], "provider outage")
        return job


def _run_with_client(config: dict, messages: list[dict], client: GTMCLIClient) -> MapperRun:
    """The mapper in process with the given client, closed after."""
    try:
        return run_plugin(config, messages, client)
    finally:
        client.close()


@pytest.mark.parametrize(("action", "named"), [("delete", "404"), ("fail", "failed: provider outage")])
def test_enrich_job_vanishing_or_failing_stops_then_rerun_is_exact(action, named) -> None:
    messages = contacts_input(RECORDS, BATCH)
    with fast_sandbox() as server:
        config = mapper_settings(server, batch_size=BATCH, **ENRICH)
        first = _run_with_client(config, messages, _AfterCreate(server, 2, action))
        assert first.error is not None
        message = str(first.error)
        assert named in message
        job_id = first.records(LEDGER)[-1]["job_id"]
        assert job_id in message
        if action == "delete":
            assert f"GET /v1/jobs/{job_id}" in message
        assert state_position(first.last_state) == BATCH
        assert_no_key(message)
        rerun = run_mapper_in_process(config, replay_after(messages, first.last_state))
        assert rerun.ok, repr(rerun.error)
        # The vanished/failed job's items were submitted again by the rerun (a vanished
        # job is no longer listed, so the sandbox then holds each item once).
        truth = mapper_truth(messages, BATCH)
        received = Counter(received_items(server))
        expected = truth.items + (Counter(truth.jobs[1][1]) if action == "fail" else Counter())
        assert received == expected
        enriched_ids = sorted(r["id"] for run in (first, rerun) for r in run.records("contacts"))
        assert enriched_ids == list(range(1, RECORDS + 1))


def test_submit_mode_ignores_jobs_that_later_fail_or_vanish() -> None:
    # Job ids are random, so a share below 1 could fail none of three jobs: fail them all.
    with fast_sandbox(fail_job_share=1.0) as server:
        completes_exactly(server, mapper_settings(server, batch_size=BATCH))
        server.wait_until_processed()
        assert [job["status"] for job in sandbox_jobs(server)] == ["failed"] * 3


# --------------------------------------------------------------------- reconciliation across runs


def test_rerun_after_a_failure_never_adopts_the_previous_runs_job() -> None:
    """Run 1 creates job 1 then stops on a 429 storm. The rerun's first create is dropped
    (nothing created); reconciliation must not adopt run 1's job (same type and item count,
    created a moment ago) in place of the batch it failed to create."""
    messages = contacts_input(RECORDS, BATCH)
    with fast_sandbox() as server:
        config = mapper_settings(server, batch_size=BATCH, max_retries=1)
        server.add_fault_rules([{**POST, "status": 200, "body": "slow", "delay": 0, "count": 1},
                                {**POST, "status": 429, "retry_after": "0", "count": 2}])
        first = run_mapper_in_process(config, messages)
        assert first.error is not None and state_position(first.last_state) == BATCH
        server.add_fault_rules([{**POST, "body": "drop", "count": 1}])
        rerun = run_mapper_in_process(config, replay_after(messages, first.last_state))
        assert rerun.ok, repr(rerun.error)
        assert_fired(server, {"body": "drop", "count": 1})
        assert_exact_truth(server, messages, [first, rerun])
