"""Job status from the clock: pending, processing with progress, completed or failed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tap_gtmcli.sandbox import SandboxServer
from tap_gtmcli.sandbox.lifecycle import JobTimeline
from tap_gtmcli.sandbox.outcomes import job_cost, validate_email

ITEMS = [{"email": f"person{n}@gmail.com"} for n in range(1000)]


def test_timeline_arithmetic() -> None:
    timeline = JobTimeline.planned(total=100, created_at=1000.0, start_delay=2.0,
                                   processing_rate=10.0)
    assert timeline.progress_at(1001.9).status == "pending"
    assert timeline.progress_at(1002.0).status == "processing"
    assert timeline.progress_at(1002.0).completed == 0
    assert timeline.progress_at(1007.0).completed == 50
    assert timeline.progress_at(1011.99).completed == 99
    done = timeline.progress_at(1012.0)
    assert (done.status, done.completed, done.finished_at) == ("completed", 100, 1012.0)
    instant = JobTimeline.planned(total=5, created_at=0.0, start_delay=0.0,
                                  processing_rate=float("inf"))
    assert instant.progress_at(0.0).status == "completed"


def test_pending_processing_completed(make_sandbox: Callable, make_client: Callable) -> None:
    server: SandboxServer = make_sandbox(start_delay=30.0, processing_rate=100.0)
    client = make_client(server)
    job_id = client.create_job("validate", ITEMS)

    pending = client.get(f"/v1/jobs/{job_id}").json()
    assert (pending["status"], pending["completed"]) == ("pending", 0)
    assert pending["credits_used"] is None
    assert pending["completed_at"] is None
    assert client.get(f"/v1/jobs/{job_id}/results").json()["results"] == []

    server.advance_clock(30.0 + 5.0)
    processing = client.get(f"/v1/jobs/{job_id}").json()
    assert processing["status"] == "processing"
    assert 500 <= processing["completed"] < 1000
    assert processing["credits_used"] is None
    assert processing["completed_at"] is None
    # Partial results: only rows processed so far, but `total` is the job's total.
    partial = client.get(f"/v1/jobs/{job_id}/results", params={"per_page": 1000}).json()
    assert partial["total"] == 1000
    assert partial["total_pages"] == 1
    assert 500 <= len(partial["results"]) <= 1000
    assert partial["results"][0]["email"] == ITEMS[0]["email"]

    server.advance_clock(6.0)
    completed = client.get(f"/v1/jobs/{job_id}").json()
    assert (completed["status"], completed["completed"]) == ("completed", 1000)
    rows = [validate_email(item["email"]) for item in ITEMS]
    assert completed["credits_used"] == job_cost("validate", rows)
    assert completed["completed_at"] is not None
    assert client.get(f"/v1/jobs/{job_id}/results", params={"per_page": 1000}).json()[
        "results"] == rows


def test_status_follows_the_wall_clock(make_sandbox: Callable, make_client: Callable) -> None:
    server = make_sandbox(start_delay=0.2, processing_rate=0.0)
    client = make_client(server)
    job_id = client.create_job("validate", ITEMS[:3])
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "pending"
    time.sleep(0.3)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "completed"


def test_fail_job_share_fails_jobs_with_an_error(
    make_sandbox: Callable, make_client: Callable
) -> None:
    server = make_sandbox(fail_job_share=1.0)
    client = make_client(server)
    job_id = client.create_job("validate", ITEMS)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert isinstance(job["error"], str)
    assert job["error"]
    assert 0 <= job["completed"] < 1000
    assert job["completed_at"] is not None
    done = job["completed"]
    rows = [validate_email(item["email"]) for item in ITEMS[:done]]
    assert job["credits_used"] == job_cost("validate", rows)
    # Failed jobs serve the rows finished before the failure.
    results = client.get(f"/v1/jobs/{job_id}/results", params={"per_page": 1000}).json()
    assert results["total"] == 1000
    assert results["results"] == rows
    # ... and pay only for them.
    assert server.credits_balance() == server.config.credits - job["credits_used"]


def test_fail_job_share_is_a_deterministic_share(make_sandbox: Callable) -> None:
    server = make_sandbox(fail_job_share=0.5)
    statuses = [server.get_job(server.create_job("validate", ITEMS[:2])["id"])["status"]
                for _ in range(60)]
    assert 10 <= statuses.count("failed") <= 50
    assert set(statuses) == {"failed", "completed"}


def test_admin_fail_route(make_sandbox: Callable, make_client: Callable) -> None:
    server = make_sandbox(start_delay=10.0, processing_rate=100.0)
    client = make_client(server)
    job_id = client.create_job("validate", ITEMS)
    server.advance_clock(12.0)
    response = client.post(f"/_sandbox/jobs/{job_id}/fail", json={"error": "disk on fire"})
    assert response.status_code == 200
    failed = response.json()
    assert failed["status"] == "failed"
    assert failed["error"] == "disk on fire"
    assert 200 <= failed["completed"] < 1000
    server.advance_clock(100.0)
    later = client.get(f"/v1/jobs/{job_id}").json()
    assert later == failed
    results = client.get(f"/v1/jobs/{job_id}/results", params={"per_page": 1000}).json()
    assert len(results["results"]) == failed["completed"]
    other = client.create_job("validate", ITEMS[:1])
    without_body = client.post(f"/_sandbox/jobs/{other}/fail")
    assert without_body.json()["error"] == "Job failed by the sandbox operator"
    assert client.post("/_sandbox/jobs/job_missing/fail").status_code == 404


def test_list_reflects_each_jobs_own_status(make_sandbox: Callable, make_client: Callable) -> None:
    server = make_sandbox(start_delay=5.0)
    client = make_client(server)
    older = client.create_job("validate", ITEMS[:2])
    server.advance_clock(10.0)
    newer = client.create_job("validate", ITEMS[:2])
    jobs: list[dict[str, Any]] = client.get("/v1/jobs").json()["jobs"]
    assert [(job["id"], job["status"]) for job in jobs] == [
        (newer, "pending"), (older, "completed")
    ]
