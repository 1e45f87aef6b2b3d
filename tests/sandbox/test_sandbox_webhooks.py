"""Webhook deliveries on completion and failure, with retries and backoff."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

ITEMS = [{"email": f"person{n}@gmail.com"} for n in range(10)]


def test_completion_webhook_retried_until_accepted(
    make_sandbox: Callable, make_client: Callable, make_receiver: Callable
) -> None:
    receiver = make_receiver(failures=2)
    server = make_sandbox(webhook_backoff=0.05, webhook_timeout=2.0)
    client = make_client(server)
    job_id = client.create_job("validate", ITEMS, webhook_url=receiver.url)
    deliveries = receiver.wait_for(3)
    time.sleep(0.3)
    assert len(receiver.deliveries) == 3
    job = client.get(f"/v1/jobs/{job_id}").json()
    expected = {
        "event": "job.completed", "job_id": job_id, "type": "validate", "status": "completed",
        "total": 10, "completed": 10, "credits_used": job["credits_used"],
        "completed_at": job["completed_at"],
    }
    assert [payload for _, payload in deliveries] == [expected] * 3
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(deliveries)]
    assert gaps[0] >= 0.05 * 0.9
    assert gaps[1] >= 0.10 * 0.9
    stats = server.stats()
    assert (stats["webhook_attempts"], stats["webhook_deliveries"], stats["webhook_failures"]) == (
        3, 1, 0)


def test_webhook_given_up_after_three_retries(
    make_sandbox: Callable, make_client: Callable, make_receiver: Callable
) -> None:
    receiver = make_receiver(failures=1000)
    server = make_sandbox(webhook_backoff=0.02)
    client = make_client(server)
    client.create_job("validate", ITEMS, webhook_url=receiver.url)
    receiver.wait_for(4)
    time.sleep(0.4)
    assert len(receiver.deliveries) == 4
    stats = server.stats()
    assert (stats["webhook_attempts"], stats["webhook_deliveries"], stats["webhook_failures"]) == (
        4, 0, 1)


def test_unreachable_webhook_counts_as_failed(make_sandbox: Callable) -> None:
    server = make_sandbox(webhook_backoff=0.01, webhook_timeout=0.5)
    server.create_job("validate", ITEMS, webhook_url="http://127.0.0.1:9/closed-port")
    deadline = time.monotonic() + 5
    while server.stats()["webhook_failures"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.stats()["webhook_attempts"] == 4
    assert server.stats()["webhook_failures"] == 1


def test_webhook_waits_for_completion_time(
    make_sandbox: Callable, make_receiver: Callable
) -> None:
    receiver = make_receiver()
    server = make_sandbox(start_delay=60.0, webhook_backoff=0.01)
    server.create_job("validate", ITEMS, webhook_url=receiver.url)
    time.sleep(0.2)
    assert receiver.deliveries == []
    server.advance_clock(61.0)
    assert len(receiver.wait_for(1)) == 1
    assert receiver.deliveries[0][1]["event"] == "job.completed"


def test_failure_webhook(make_sandbox: Callable, make_receiver: Callable) -> None:
    receiver = make_receiver()
    server = make_sandbox(start_delay=60.0, webhook_backoff=0.01)
    job_id = server.create_job("validate", ITEMS, webhook_url=receiver.url)["id"]
    failed = server.fail_job(job_id, "boom")
    payload = receiver.wait_for(1)[0][1]
    assert payload == {
        "event": "job.failed", "job_id": job_id, "type": "validate", "status": "failed",
        "total": 10, "completed": 0, "credits_used": 0.0,
        "completed_at": failed["completed_at"],
    }


def test_fail_job_share_sends_job_failed(make_sandbox: Callable, make_receiver: Callable) -> None:
    receiver = make_receiver()
    server = make_sandbox(fail_job_share=1.0, webhook_backoff=0.01)
    server.create_job("validate", ITEMS, webhook_url=receiver.url)
    assert receiver.wait_for(1)[0][1]["event"] == "job.failed"
