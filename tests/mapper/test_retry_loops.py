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
from tests.helpers.fake_client import FakeGTMCLI
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY


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


class SlowToListCreate(FakeGTMCLI):
    """A create whose answer is lost; the job it made shows in the list only from the
    `listed_from`-th look on (never, when None)."""

    def __init__(self, listed_from: int | None) -> None:
        super().__init__(["ambiguous-created" if listed_from is not None else "ambiguous-lost"])
        self.listed_from = listed_from
        self.looks = 0
        self.hidden: list[str] = []

    def create_job(self, *args: Any, **kwargs: Any) -> dict:
        try:
            return super().create_job(*args, **kwargs)
        except GTMCLIAmbiguousCreateError as error:
            self.hidden = list(self.jobs)
            # As after a timeout: the server may still be working, so the look goes on.
            raise GTMCLIAmbiguousCreateError(str(error), 0.0, api_answered=False) from None

    def list_jobs_page(self, page: int = 1) -> dict:
        return {"jobs": []}  # the snapshot before the first create: no job yet

    def list_jobs(self) -> Iterator[dict]:
        self.looks += 1
        if self.listed_from is None or self.looks < self.listed_from:
            return iter([job for job in super().list_jobs() if job["id"] not in self.hidden])
        return super().list_jobs()


def submit_one_batch(client: FakeGTMCLI, sleeps: list[float], now: list[float]) -> Any:
    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    submitter = JobSubmitter(
        client=client,  # type: ignore[arg-type]  # the fake has the client's methods
        webhook_url=None,
        max_resubmissions=1,
        request_timeout=1.0,
        clock=lambda: now[0],
        sleep=sleep,
    )
    batch, _ = OpenBatches(batch_size=10).add("contacts", "validate", "a@x.io", seq=1)
    return submitter.submit(batch)


def test_after_an_ambiguous_create_the_look_again_pauses_grow_until_the_job_shows() -> None:
    client, sleeps = SlowToListCreate(listed_from=4), []
    job = submit_one_batch(client, sleeps, [0.0])
    assert (job.job_id, client.create_calls, client.looks) == ("job_1", 1, 4)
    assert sleeps == [0.25, 0.5, 1.0]


def test_the_look_again_stops_at_the_grace_period_then_resubmits() -> None:
    client, sleeps = SlowToListCreate(listed_from=None), []
    job = submit_one_batch(client, sleeps, [0.0])
    # Grace: two request timeouts (2 s); the last pause is cut to end there.
    assert sleeps == [0.25, 0.5, 1.0, 0.25]
    assert (job.job_id, client.create_calls, client.looks) == ("job_1", 2, 5)


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
