"""The /_sandbox/ test routes and their in-process twins."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tap_gtmcli.sandbox import ApiError, SandboxConfig, SandboxServer
from tap_gtmcli.sandbox.outcomes import validate_email


def test_stats_count_requests_per_route_pattern(client: Any, sandbox: SandboxServer) -> None:
    job_id = client.create_job("validate", [{"email": "a@gmail.com"}])
    client.get("/v1/jobs")
    for _ in range(3):
        client.get(f"/v1/jobs/{job_id}")
    client.get(f"/v1/jobs/{job_id}/results")
    client.get("/v1/jobs/job_nope/results")
    client.get("/nowhere")
    before = time.time()
    stats = client.get("/_sandbox/stats").json()
    first, last = stats.pop("first_request_at"), stats.pop("last_answer_at")
    assert first <= last <= before
    assert stats == {
        "requests": {"POST /v1/jobs": 1, "GET /v1/jobs": 1, "GET /v1/jobs/{id}": 3,
                     "GET /v1/jobs/{id}/results": 2, "GET (unmatched)": 1},
        "rate_limited": 0, "errors_injected": 0, "dropped": 0, "truncated": 0, "slowed": 0,
        "webhook_attempts": 0, "webhook_deliveries": 0, "webhook_failures": 0,
        "credits_balance": sandbox.credits_balance(),
    }
    assert {k: v for k, v in sandbox.stats().items() if not k.endswith("_at")} == stats
    reset = client.post("/_sandbox/reset-stats")
    assert reset.status_code == 200
    assert reset.json()["requests"] == {}
    assert reset.json()["first_request_at"] is None
    sandbox.reset_stats()
    assert sandbox.stats()["requests"] == {}


def test_seed_route_creates_completed_jobs(client: Any) -> None:
    response = client.post("/_sandbox/seed", json={"type": "find", "count": 250, "jobs": 3})
    assert response.status_code == 201
    job_ids = response.json()["job_ids"]
    assert len(job_ids) == 3
    listed = client.get("/v1/jobs").json()["jobs"]
    assert [job["id"] for job in listed] == job_ids[::-1]
    for job in listed:
        assert (job["type"], job["status"], job["total"], job["completed"]) == (
            "find", "completed", 250, 250)
    rows = client.get(f"/v1/jobs/{job_ids[0]}/results", params={"per_page": 1000}).json()
    assert len(rows["results"]) == 250
    assert {"valid", "not_found"} <= {row["status"] for row in rows["results"]}


def test_seeding_is_deterministic_and_free(sandbox: SandboxServer, client: Any) -> None:
    balance = sandbox.credits_balance()
    first, second = sandbox.seed_jobs("validate", 300, jobs=2)
    again = sandbox.seed_jobs("validate", 300)[0]
    assert sandbox.credits_balance() == balance
    assert sandbox.job_items(first) == sandbox.job_items(again)
    assert sandbox.job_items(first) != sandbox.job_items(second)
    page = client.get(f"/v1/jobs/{first}/results", params={"per_page": 1000}).json()["results"]
    assert page == [validate_email(item["email"]) for item in sandbox.job_items(first)]
    other_seed = sandbox.seed_jobs("validate", 300, seed="other")[0]
    assert sandbox.job_items(other_seed) != sandbox.job_items(first)


def test_seed_statuses(sandbox: SandboxServer) -> None:
    failed = sandbox.get_job(sandbox.seed_jobs("validate", 100, status="failed")[0])
    assert failed["status"] == "failed"
    assert failed["error"]
    pending = sandbox.seed_jobs("validate", 100, status="pending")[0]
    assert sandbox.get_job(pending)["status"] in ("pending", "processing", "completed")


def test_seeding_100000_items_is_fast(sandbox: SandboxServer, client: Any) -> None:
    started = time.monotonic()
    job_id = sandbox.seed_jobs("validate", 100_000)[0]
    assert time.monotonic() - started < 20
    last = client.get(f"/v1/jobs/{job_id}/results", params={"page": 100, "per_page": 1000})
    assert len(last.json()["results"]) == 1000


@pytest.mark.parametrize(
    "body",
    [{"type": "verify", "count": 1}, {"type": "validate", "count": 0},
     {"type": "validate", "count": 100_001}, {"type": "validate", "count": "5"},
     {"type": "validate", "count": 5, "jobs": 0}, {"type": "validate", "count": 5,
                                                   "status": "processing"}, [1]],
)
def test_seed_rejects_bad_bodies(client: Any, body: Any) -> None:
    response = client.post("/_sandbox/seed", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_delete_job(client: Any, sandbox: SandboxServer) -> None:
    job_id = client.create_job("validate", [{"email": "a@gmail.com"}])
    balance = sandbox.credits_balance()
    response = client.delete(f"/_sandbox/jobs/{job_id}")
    assert (response.status_code, response.json()) == (200, {"deleted": job_id})
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/results").status_code == 404
    assert client.get("/v1/jobs").json() == {"jobs": []}
    assert client.delete(f"/_sandbox/jobs/{job_id}").status_code == 404
    # Deleting is not a refund.
    assert sandbox.credits_balance() == balance
    other = sandbox.seed_jobs("validate", 5)[0]
    assert sandbox.delete_job(other) is True
    assert sandbox.delete_job(other) is False


def test_items_route_returns_items_as_submitted(client: Any) -> None:
    items = [{"email": "A@Example.com ", "crm_id": 7, "tags": ["x"]},
             {"email": "b@gmail.com", "note": None}]
    job_id = client.create_job("validate", items)
    response = client.get(f"/_sandbox/jobs/{job_id}/items")
    assert response.json() == {"items": items}
    assert client.get("/_sandbox/jobs/job_nope/items").status_code == 404


def test_unknown_sandbox_route(client: Any) -> None:
    response = client.get("/_sandbox/nothing")
    assert (response.status_code, response.json()["error"]) == (404, "not_found")
    assert client.post("/_sandbox/seed", data=b"{").json()["error"] == "invalid_request"


def test_clock_route(client: Any, make_sandbox: Callable, make_client: Callable) -> None:
    server = make_sandbox(start_delay=100.0)
    client = make_client(server)
    job_id = client.create_job("validate", [{"email": "a@gmail.com"}])
    assert client.post("/_sandbox/clock", json={"advance": 101}).status_code == 200
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "completed"
    assert client.post("/_sandbox/clock", json={"advance": -1}).status_code == 400


def test_in_process_api_errors(sandbox: SandboxServer) -> None:
    with pytest.raises(ApiError) as missing:
        sandbox.get_job("job_nope")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(ApiError) as bad:
        sandbox.create_job("validate", [{"mail": "x"}])
    assert bad.value.code == "invalid_request"
    with pytest.raises(ApiError):
        sandbox.set_faults(error_share=5)


def test_server_binds_loopback_only(make_sandbox: Callable) -> None:
    server = make_sandbox()
    assert server.url.startswith("http://127.0.0.1:")
    with pytest.raises(ValueError, match="host"):
        SandboxConfig(host="0.0.0.0")
    with SandboxServer(SandboxConfig(host="localhost")) as local:
        assert local.url.startswith("http://127.0.0.1:")
