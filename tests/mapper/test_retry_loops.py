"""The backoff-driven loops: the client's retries and the polling waits, with exact sleeps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.errors import (
    EnrichmentFailedError,
    GTMCLIAmbiguousCreateError,
    GTMCLIRetriesExhaustedError,
)
from tap_gtmcli.api.retry import RetryPolicy, growing_pauses
from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tap_gtmcli.submit.batches import OpenBatches
from tap_gtmcli.submit.enrich import ResultsFetcher
from tap_gtmcli.submit.job_creation import JobSubmitter
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.sandboxes import creates_seen, sandbox_jobs, script_creates


@contextmanager
def client_meeting(
    server: Any, fault: dict[str, Any], max_retries: int
) -> Iterator[tuple[GTMCLIClient, list[float]]]:
    """A client of `server` after `fault` is scripted, and the sleeps it asks for."""
    server.add_fault_rules([fault])
    sleeps: list[float] = []
    client = GTMCLIClient(
        api_url=server.url,
        api_key=API_KEY,
        timeout=2,
        retry=RetryPolicy(max_retries=max_retries),
        sleep=sleeps.append,
    )
    try:
        yield client, sleeps
    finally:
        client.close()


def test_retries_sleep_retry_after_exactly_then_fail_naming_the_attempts(sandbox: Any) -> None:
    fault = {"method": "GET", "path_prefix": "/v1/jobs/", "status": 503, "retry_after": "7",
             "count": 3}
    with (
        client_meeting(sandbox, fault, max_retries=2) as (client, sleeps),
        pytest.raises(GTMCLIRetriesExhaustedError) as raised,
    ):
        client.get_job("job_missing")
    host = sandbox.url.removeprefix("http://")
    assert str(raised.value) == (
        f"GET /v1/jobs/job_missing on {host} failed after 3 attempt(s); last error: "
        "GET /v1/jobs/job_missing answered 503 (internal_error)")
    assert_no_key(str(raised.value))
    assert sleeps == [7.0, 7.0]


def test_a_transient_failure_then_success_returns_the_answer(sandbox: Any) -> None:
    fault = {"method": "GET", "path_prefix": "/v1/jobs", "status": 429, "retry_after": "3"}
    with client_meeting(sandbox, fault, max_retries=5) as (client, sleeps):
        assert client.list_jobs_page(1)["jobs"] == []
    assert sleeps == [3.0]


def test_an_ambiguous_create_is_handed_back_at_once_not_retried(sandbox: Any) -> None:
    fault = {"method": "POST", "path_prefix": "/v1/jobs", "status": 500}
    with (
        client_meeting(sandbox, fault, max_retries=5) as (client, sleeps),
        pytest.raises(GTMCLIAmbiguousCreateError) as raised,
    ):
        client.create_job("validate", [{"email": "a@example.com"}])
    assert raised.value.api_answered
    assert sleeps == []
    assert sandbox.stats()["requests"]["POST /v1/jobs"] == 1


def test_growing_pauses_multiply_up_to_the_longest() -> None:
    pauses = growing_pauses(0.25, 2, 5.0)
    assert [next(pauses) for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


# Scripted, not the sandbox: the exact backoff needs a set status at each check, on a set clock.
class ScriptedJobs:
    """A client whose job reports `statuses` in turn, on a clock the sleeps advance."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses
        self.checks = 0
        self.now = 0.0
        self.sleeps: list[float] = []

    def get_job(self, job_id: str) -> dict:
        status = self.statuses[min(self.checks, len(self.statuses) - 1)]
        self.checks += 1
        return {"id": job_id, "status": status, "completed": 0, "total": 4, "error": "outage"}

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def waiter(self, poll_interval: float, max_wait: float) -> ResultsFetcher:
        return ResultsFetcher(
            client=self,  # type: ignore[arg-type]  # only get_job is called
            poll_interval=poll_interval,
            max_wait=max_wait,
            sleep=self.sleep,
            clock=lambda: self.now,
        )


def test_the_wait_for_a_job_backs_off_from_the_poll_interval() -> None:
    jobs = ScriptedJobs(["queued", "processing", "processing", "processing", "completed"])
    job = jobs.waiter(poll_interval=2, max_wait=3600).wait("job_1")
    assert job["status"] == "completed"
    assert jobs.checks == 5
    assert jobs.sleeps == [2.0, 3.0, 4.5, 6.75]


def test_the_wait_never_sleeps_past_max_wait_and_then_fails_naming_it() -> None:
    jobs = ScriptedJobs(["processing"])
    with pytest.raises(EnrichmentFailedError) as raised:
        jobs.waiter(poll_interval=4, max_wait=10).wait("job_1")
    assert str(raised.value) == (
        "GTMCLI job job_1 did not complete within max_wait=10 s "
        "(status 'processing', 0 of 4 done)"
    )
    assert jobs.sleeps == [4.0, 6.0]
    assert jobs.checks == 3


def test_a_failed_job_ends_the_wait_with_its_reason() -> None:
    jobs = ScriptedJobs(["queued", "failed"])
    with pytest.raises(EnrichmentFailedError, match="GTMCLI job job_1 failed: outage"):
        jobs.waiter(poll_interval=1, max_wait=60).wait("job_1")
    assert jobs.sleeps == [1.0]


def submit_one_batch(
    server: SandboxServer, sleeps: list[float], *, job_shows_after: int | None
) -> Any:
    """Submit one batch whose create's connection drops before anything is made; the
    job shows in the list during pause number `job_shows_after` of the look again (never,
    when None), as a server still at work on the create would list it late. The clock
    is the sleeps."""
    script_creates(server, "dropped")
    now = [0.0]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds
        if len(sleeps) == job_shows_after:
            server.create_job("validate", [{"email": "a@x.io"}])

    client = GTMCLIClient(
        api_url=server.url, api_key=API_KEY, timeout=1.0, retry=RetryPolicy(max_retries=0)
    )
    submitter = JobSubmitter(
        client=client,
        webhook_url=None,
        max_resubmissions=1,
        request_timeout=1.0,
        clock=lambda: now[0],
        sleep=sleep,
    )
    batch, _ = OpenBatches(batch_size=10).add("contacts", "validate", "a@x.io", seq=1)
    try:
        return submitter.submit(batch)
    finally:
        client.close()


def looks_and_jobs(server: SandboxServer) -> tuple[int, list[str]]:
    """How often the list was read after the snapshot before the first create, and the
    ids of the jobs the sandbox holds."""
    lists = server.stats()["requests"].get("GET /v1/jobs", 0)
    return lists - 1, [job["id"] for job in sandbox_jobs(server)]


def test_after_an_ambiguous_create_the_look_again_pauses_grow_until_the_job_shows(
    sandbox: SandboxServer,
) -> None:
    sleeps: list[float] = []
    job = submit_one_batch(sandbox, sleeps, job_shows_after=3)
    looks, jobs = looks_and_jobs(sandbox)
    assert ([job.job_id], creates_seen(sandbox), looks) == (jobs, 1, 4)
    assert sleeps == [0.25, 0.5, 1.0]


def test_the_look_again_stops_at_the_grace_period_then_resubmits(
    sandbox: SandboxServer,
) -> None:
    sleeps: list[float] = []
    job = submit_one_batch(sandbox, sleeps, job_shows_after=None)
    # Grace: two request timeouts (2 s); the last pause is cut to end there.
    assert sleeps == [0.25, 0.5, 1.0, 0.25]
    looks, jobs = looks_and_jobs(sandbox)
    assert ([job.job_id], creates_seen(sandbox), looks) == (jobs, 2, 5)


def test_a_refused_connection_before_any_answer_fails_at_once_naming_host_and_port() -> None:
    with SandboxServer(SandboxConfig(api_key=API_KEY)) as server:
        url = server.url  # stopped on leaving: nothing listens there any more
    client = GTMCLIClient(api_url=url, api_key=API_KEY, retry=RetryPolicy(max_retries=5))
    started = time.monotonic()
    try:
        with pytest.raises(GTMCLIRetriesExhaustedError) as raised:
            client.list_jobs_page()
    finally:
        client.close()
    port = url.rsplit(":", 1)[1]
    assert f"127.0.0.1:{port} refused the connection" in str(raised.value)
    assert "failed after 1 attempt(s)" in str(raised.value)
    assert time.monotonic() - started < 10
