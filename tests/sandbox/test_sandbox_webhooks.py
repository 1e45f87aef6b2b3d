"""Webhook deliveries on completion and failure, with retries and backoff."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class Receiver:
    """A webhook endpoint on 127.0.0.1 that fails its first `failures` deliveries."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.deliveries: list[tuple[float, dict[str, Any]]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.arrived:
                    receiver.deliveries.append((time.monotonic(), json.loads(body)))
                    attempt = len(receiver.deliveries)
                    receiver.arrived.notify_all()
                status = 500 if attempt <= receiver.failures else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[float, dict[str, Any]]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.deliveries) >= count, timeout)
            return list(self.deliveries)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def make_receiver() -> Iterator[Callable[[int], Receiver]]:
    receivers: list[Receiver] = []

    def make(failures: int = 0) -> Receiver:
        receivers.append(Receiver(failures))
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.close()


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
