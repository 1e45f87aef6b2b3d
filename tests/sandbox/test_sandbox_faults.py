"""Random faults by share, latency, and scripted fault rules."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tap_gtmcli.sandbox import FaultRule
from tests.helpers.keys import API_KEY


def statuses(client: Any, count: int) -> list[int | str]:
    seen: list[int | str] = []
    for _ in range(count):
        try:
            seen.append(client.get("/v1/jobs").status_code)
        except requests.ConnectionError:
            seen.append("drop")
    return seen


def test_error_share_mixes_html_proxy_pages_and_json(
    make_sandbox: Callable, make_client: Callable
) -> None:
    server = make_sandbox(error_share=1.0, fault_seed=7)
    client = make_client(server)
    responses = [client.get("/v1/jobs") for _ in range(40)]
    html = [r for r in responses if r.headers["Content-Type"] == "text/html"]
    json_errors = [r for r in responses if r.headers["Content-Type"] == "application/json"]
    assert {r.status_code for r in html} == {502}
    assert b"502 Bad Gateway" in html[0].content
    assert {r.status_code for r in json_errors} <= {500, 503}
    assert {r.json()["error"] for r in json_errors} == {"internal_error"}
    assert 8 <= len(html) <= 32
    assert server.stats()["errors_injected"] == 40
    assert server.stats()["requests"] == {"GET /v1/jobs": 40}


def test_faults_repeat_with_the_same_seed(make_sandbox: Callable, make_client: Callable) -> None:
    runs = []
    for _ in range(2):
        client = make_client(make_sandbox(error_share=0.3, drop_share=0.2, fault_seed=42))
        runs.append(statuses(client, 30))
    assert runs[0] == runs[1]
    assert {"drop", 200} <= set(runs[0])
    assert set(runs[0]) - {"drop", 200}


def test_drop_share_closes_without_answering(make_sandbox: Callable, make_client: Callable) -> None:
    server = make_sandbox(drop_share=1.0)
    client = make_client(server)
    with pytest.raises(requests.ConnectionError):
        client.get("/v1/jobs")
    assert server.stats()["dropped"] == 1


def test_truncate_share_cuts_the_body_in_half(
    make_sandbox: Callable, make_client: Callable
) -> None:
    server = make_sandbox()
    client = make_client(server)
    job_id = server.seed_jobs("validate", 20)[0]
    whole = client.get(f"/v1/jobs/{job_id}/results").content
    server.set_faults(truncate_share=1.0)
    cut = client.get(f"/v1/jobs/{job_id}/results")
    assert cut.status_code == 200
    assert cut.content == whole[: len(whole) // 2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.content)
    assert server.stats()["truncated"] == 1
    # Errors are never truncated: only 200s are.
    assert client.get("/v1/jobs/job_missing").json()["error"] == "not_found"


def test_latency_is_per_request_and_overlaps(make_sandbox: Callable) -> None:
    server = make_sandbox(latency_ms=300)
    durations: list[float] = []

    def call() -> None:
        with requests.Session() as session:
            session.trust_env = False
            started = time.monotonic()
            session.get(f"{server.url}/v1/jobs",
                        headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)
            durations.append(time.monotonic() - started)

    started = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(duration >= 0.3 for duration in durations)
    assert time.monotonic() - started < 1.0


def test_faults_changed_at_runtime_over_http(make_sandbox: Callable, make_client: Callable) -> None:
    server = make_sandbox()
    client = make_client(server)
    response = client.post("/_sandbox/faults", json={"error_share": 1.0, "fault_seed": 3})
    assert response.status_code == 200
    assert response.json()["error_share"] == 1.0
    assert client.get("/v1/jobs").status_code >= 500
    # Test routes are never faulted.
    assert client.get("/_sandbox/faults").json()["error_share"] == 1.0
    client.post("/_sandbox/faults", json={"error_share": 0.0})
    assert client.get("/v1/jobs").status_code == 200
    for bad in ({"error_share": 2}, {"error_share": 0.6, "drop_share": 0.6}, {"volume": 11},
                {"rules": "no"}, {"rules": [{"body": "poetry"}]}, {"rules": [{"count": 0}]},
                {"rules": [{"colour": "red"}]}, {"latency_ms": -1}):
        error = client.post("/_sandbox/faults", json=bad)
        assert error.status_code == 400, bad
        assert error.json()["error"] == "invalid_request"


def test_scripted_429s_then_normal(make_sandbox: Callable, make_client: Callable) -> None:
    server = make_sandbox()
    client = make_client(server)
    server.add_fault_rules([
        {"method": "GET", "path_prefix": "/v1/jobs", "status": 429, "count": 3,
         "retry_after": "2"},
    ])
    assert client.post("/v1/jobs", json={"type": "validate",
                                         "data": [{"email": "a@gmail.com"}]}).status_code == 201
    limited = [client.get("/v1/jobs") for _ in range(3)]
    for response in limited:
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "2"
        assert response.json()["error"] == "rate_limit_exceeded"
    assert client.get("/v1/jobs").status_code == 200
    assert server.stats()["rate_limited"] == 3
    assert server.faults()["rules"] == []


def test_scripted_rules_consumed_in_order(make_sandbox: Callable, make_client: Callable) -> None:
    server = make_sandbox()
    client = make_client(server)
    job_id = server.seed_jobs("validate", 10)[0]
    whole = client.get(f"/v1/jobs/{job_id}/results").content
    response = client.post("/_sandbox/faults", json={"rules": [
        {"path_prefix": "/v1/jobs/", "status": 502, "body": "html"},
        {"path_prefix": "/v1/jobs/", "body": "drop"},
        {"path_prefix": "/v1/jobs/", "body": "truncated"},
        {"path_prefix": "/v1/jobs/", "body": "slow", "delay": 0.3},
        {"path_prefix": "/v1/jobs/", "status": 503, "body": "json"},
    ]})
    assert len(response.json()["rules"]) == 5
    results = f"/v1/jobs/{job_id}/results"
    # A request the rules do not match passes untouched.
    assert client.get("/v1/jobs").status_code == 200

    html = client.get(results)
    assert (html.status_code, html.headers["Content-Type"]) == (502, "text/html")
    with pytest.raises(requests.ConnectionError):
        client.get(results)
    truncated = client.get(results)
    assert (truncated.status_code, truncated.content) == (200, whole[: len(whole) // 2])
    started = time.monotonic()
    slow = client.get(results)
    assert time.monotonic() - started >= 0.3
    assert slow.content == whole
    error = client.get(results)
    assert (error.status_code, error.json()["error"]) == (503, "internal_error")
    assert "Retry-After" not in error.headers
    assert client.get(results).content == whole
    stats = server.stats()
    assert (stats["errors_injected"], stats["dropped"], stats["truncated"], stats["slowed"]) == (
        2, 1, 1, 1)


def test_rules_match_method(make_sandbox: Callable, make_client: Callable) -> None:
    server = make_sandbox()
    client = make_client(server)
    server.add_fault_rules([FaultRule(method="POST", status=500, count=2)])
    assert client.get("/v1/jobs").status_code == 200
    body = {"type": "validate", "data": [{"email": "a@gmail.com"}]}
    assert [client.post("/v1/jobs", json=body).status_code for _ in range(3)] == [500, 500, 201]
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1
    server.add_fault_rules([{"status": 500, "count": 5}])
    server.clear_fault_rules()
    assert client.get("/v1/jobs").status_code == 200


def test_drop_after_handles_the_request_then_closes(
    make_sandbox: Callable, make_client: Callable
) -> None:
    server = make_sandbox()
    client = make_client(server)
    server.add_fault_rules([{"method": "POST", "path_prefix": "/v1/jobs", "body": "drop_after"}])
    with pytest.raises(requests.ConnectionError):
        client.post("/v1/jobs", json={"type": "validate", "data": [{"email": "a@gmail.com"}]})
    # The job exists although the client never heard back.
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1
    assert server.stats()["dropped"] == 1
