"""Background computation: creates answer at once, rows follow, credits are reserved."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tap_gtmcli.sandbox import SandboxConfig, SandboxServer, job_cost
from tap_gtmcli.sandbox.outcomes import encode_rows, outcome, row_cost
from tap_gtmcli.sandbox.synthetic import synthetic_items
from tests.helpers.keys import API_KEY

BIG = [{"email": f"person{n}@company{n % 997}.com"} for n in range(100_000)]
EDGE_EMAILS = [
    "A@B.CO", " x@gmail.com ", "x@@gmail.com", "@gmail.com", "x@", "x@a.test", "info+x@acme.com",
    "a..b@acme.com", ".a@acme.com", "a.@acme.com", "a.b@acme..com", "user@mailinator.com",
    "ZoË@acme.com", "x" * 250 + "@a.com", "a@b.c", "a@-b.com", "a@catchall.io", "a@b.com\n",
    "a\n@b.com", "noreply@gmail.com", "a@x.invalid", "é@a.com", "a@sub.domain.co.uk", "a@b", "",
    " ", "a @b.com", "a@b.com.", "a@localhost", "a@x.local", "A+B@Acme.Com", "sales+eu@hooli.io",
]


def all_rows(client: Any, job_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    page = 1
    while True:
        body = client.get(f"/v1/jobs/{job_id}/results",
                          params={"page": page, "per_page": 1000}).json()
        rows += body["results"]
        if page >= body["total_pages"]:
            return rows
        page += 1


def expected_rows(job_type: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [outcome(job_type, item) for item in items]


@pytest.mark.parametrize("job_type", ["validate", "find"])
def test_fast_encoder_matches_the_reference_outcomes_byte_for_byte(job_type: str) -> None:
    items = synthetic_items(job_type, 20_000, "encoder")
    if job_type == "validate":
        items += [{"email": email} for email in EDGE_EMAILS] + BIG[:5000]
    else:
        items += [
            {"first_name": first, "last_name": last, "domain": domain}
            for first in ("", "Tim", "José", "O'Neil", "ZOË")
            for last in ("", "Cook", "Müller-Lüdenscheidt", "van der Berg")
            for domain in ("", "apple.com", "https://www.Apple.com/x", "@acme.io",
                           "mailinator.com", "a.test", "nodot", "catchall.io", "gmail.com")
        ]
    rows, costs = encode_rows(job_type, items)
    reference = expected_rows(job_type, items)
    assert rows == [msgspec.json.encode(row) for row in reference]
    assert costs == [row_cost(job_type, row) for row in reference]


def test_a_100000_item_create_answers_before_its_rows_exist(
    sandbox: SandboxServer, client: Any
) -> None:
    sandbox.pause_processing()
    started = time.perf_counter()
    response = client.post("/v1/jobs", json={"type": "validate", "data": BIG})
    answer_seconds = time.perf_counter() - started
    assert response.status_code == 201
    assert response.json()["status"] == "pending"
    assert answer_seconds < 2.0  # about 0.2 s unloaded; generous for busy machines
    job_id = response.json()["id"]

    # The timeline says done (rate 0) but no row is computed: still processing, no rows.
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["completed"]) == ("processing", 0)
    assert job["credits_used"] is None
    assert job["completed_at"] is None
    assert client.get(f"/v1/jobs/{job_id}/results").json()["results"] == []
    # The worst case is held meanwhile.
    assert sandbox.credits_balance() == sandbox.config.credits - 25_000

    sandbox.resume_processing()
    sandbox.wait_until_processed()
    done = client.get(f"/v1/jobs/{job_id}").json()
    assert (done["status"], done["completed"]) == ("completed", 100_000)
    rows = all_rows(client, job_id)
    assert rows == expected_rows("validate", BIG)
    assert done["credits_used"] == job_cost("validate", rows)
    assert done["completed_at"] >= done["created_at"]
    assert sandbox.credits_balance() == sandbox.config.credits - done["credits_used"]


def test_progress_never_exceeds_the_rows_computed(sandbox: SandboxServer, client: Any) -> None:
    job_id = client.create_job("validate", BIG)
    store = sandbox._store  # the test peeks at the computed count
    seen = set()
    while True:
        # Read in this order (page, job, stored count): each later read sees at least as
        # much computed as the one before, so the checks below cannot race the processor.
        page = client.get(f"/v1/jobs/{job_id}/results",
                          params={"page": 100, "per_page": 1000}).json()["results"]
        job = client.get(f"/v1/jobs/{job_id}").json()
        record = store.get_job(job_id)
        assert record is not None
        assert job["completed"] <= record.computed
        seen.add(job["status"])
        if job["status"] == "completed":
            assert record.computed == 100_000
            break
        assert job["status"] == "processing"
        assert job["completed"] < 100_000
        assert page == []  # the last page only exists once every row does
    assert "processing" in seen or "completed" in seen


def test_progress_is_the_smaller_of_timeline_and_computation(
    make_sandbox: Callable, make_client: Callable
) -> None:
    server: SandboxServer = make_sandbox(start_delay=0, processing_rate=1000.0, inline_rows=0)
    client = make_client(server)
    job_id = client.create_job("validate", BIG[:20_000])
    server.wait_until_processed()
    # Computed long ago, but the timeline (20 s at 1000/s) holds it back.
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "processing"
    assert job["completed"] < 20_000
    server.advance_clock(25.0)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "completed"


def test_the_reservation_refuses_jobs_whose_worst_case_exceeds_the_balance(
    make_sandbox: Callable, make_client: Callable
) -> None:
    server: SandboxServer = make_sandbox(credits=50.0, inline_rows=0)
    client = make_client(server)
    broken = [{"email": f"broken{n}"} for n in range(201)]
    # All rows would be free, but 201 x 0.25 is more than 50 credits.
    response = client.post("/v1/jobs", json={"type": "validate", "data": broken})
    assert response.status_code == 402
    assert response.json()["error"] == "insufficient_credits"
    assert client.get("/v1/jobs").json() == {"jobs": []}

    server.pause_processing()
    client.create_job("validate", broken[:100])  # holds 25
    assert server.credits_balance() == 25.0
    second = client.post("/v1/jobs", json={"type": "validate", "data": broken[:101]})
    assert second.status_code == 402
    server.resume_processing()
    server.wait_until_processed()
    assert server.credits_balance() == 50.0  # the free rows released the hold
    client.create_job("validate", broken[:200])
    server.wait_until_processed()
    assert server.credits_balance() == 50.0


@pytest.mark.parametrize("job_type", ["validate", "find"])
def test_after_processing_the_balance_is_the_grant_minus_the_actual_cost(
    make_sandbox: Callable, make_client: Callable, job_type: str
) -> None:
    server: SandboxServer = make_sandbox(credits=100_000.0, inline_rows=0)
    client = make_client(server)
    items = synthetic_items(job_type, 30_000, "balance")
    job_id = client.create_job(job_type, items)
    server.wait_until_processed()
    cost = job_cost(job_type, expected_rows(job_type, items))
    assert 0 < cost < 30_000 * (0.25 if job_type == "validate" else 1.0)
    assert server.credits_balance() == 100_000.0 - cost
    assert client.get("/_sandbox/stats").json()["credits_balance"] == 100_000.0 - cost
    assert client.get(f"/v1/jobs/{job_id}").json()["credits_used"] == cost


def test_planned_failures_of_background_jobs_serve_the_rows_done(
    make_sandbox: Callable, make_client: Callable
) -> None:
    server: SandboxServer = make_sandbox(fail_job_share=1.0, inline_rows=0)
    client = make_client(server)
    items = BIG[:20_000]
    job_id = client.create_job("validate", items)
    server.wait_until_processed()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed"
    done = job["completed"]
    assert 0 <= done < 20_000
    rows = expected_rows("validate", items[:done])
    assert job["credits_used"] == job_cost("validate", rows)
    assert all_rows(client, job_id) == rows
    assert server.credits_balance() == server.config.credits - job["credits_used"]


def test_failing_or_deleting_a_job_still_computing(
    make_sandbox: Callable, make_client: Callable
) -> None:
    server: SandboxServer = make_sandbox(credits=10_000.0, inline_rows=0)
    client = make_client(server)
    server.pause_processing()
    failed = client.create_job("validate", BIG[:5000])
    deleted = client.create_job("validate", BIG[5000:10_000])
    view = client.post(f"/_sandbox/jobs/{failed}/fail").json()
    assert (view["status"], view["completed"], view["credits_used"]) == ("failed", 0, 0.0)
    assert client.delete(f"/_sandbox/jobs/{deleted}").status_code == 200
    server.resume_processing()
    server.wait_until_processed()
    # The deleted job pays its actual cost (not a refund, nor the worst case).
    cost = job_cost("validate", expected_rows("validate", BIG[5000:10_000]))
    assert server.credits_balance() == 10_000.0 - cost
    assert client.get(f"/v1/jobs/{failed}").json() == view
    assert client.get(f"/v1/jobs/{failed}/results").json()["results"] == []


def test_webhooks_wait_for_the_rows(
    make_sandbox: Callable, make_client: Callable, make_receiver: Callable
) -> None:
    receiver = make_receiver(0)
    server: SandboxServer = make_sandbox(inline_rows=0)
    client = make_client(server)
    server.pause_processing()
    job_id = client.create_job("validate", BIG[:3000], webhook_url=receiver.url)
    time.sleep(0.3)
    assert receiver.deliveries == []
    server.resume_processing()
    (_, event), = receiver.wait_for(1)
    assert (event["job_id"], event["status"], event["completed"]) == (job_id, "completed", 3000)
    time.sleep(0.2)
    assert len(receiver.deliveries) == 1


def test_a_restart_mid_computation_resumes_with_identical_rows(
    tmp_path: Path, make_client: Callable
) -> None:
    config = SandboxConfig(api_key=API_KEY, db_path=str(tmp_path / "s.db"), start_delay=0,
                           processing_rate=0)
    with SandboxServer(config) as first:
        client = make_client(first)
        job_id = client.create_job("validate", BIG)
        find_id = client.create_job("find", synthetic_items("find", 10_000, "restart"))
        store = first._store  # the test peeks at the computed count
        deadline = time.monotonic() + 30
        while (record := store.get_job(job_id)) is not None and record.computed == 0:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        first.pause_processing()
        assert client.get(f"/v1/jobs/{find_id}").json()["status"] == "processing"
        partial = client.get(f"/v1/jobs/{job_id}").json()
    assert record is not None
    assert partial["status"] == "processing"
    assert 0 < record.computed < 100_000
    with SandboxServer(config) as second:
        client = make_client(second)
        second.wait_until_processed()
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert (job["status"], job["completed"]) == ("completed", 100_000)
        rows = all_rows(client, job_id)
        assert rows == expected_rows("validate", BIG)
        assert job["credits_used"] == job_cost("validate", rows)
        found = all_rows(client, find_id)
        assert found == expected_rows("find", synthetic_items("find", 10_000, "restart"))
        spent = job["credits_used"] + job_cost("find", found)
        assert second.credits_balance() == config.credits - spent


def test_wait_until_processed_times_out_while_paused(
    make_sandbox: Callable, make_client: Callable
) -> None:
    server: SandboxServer = make_sandbox(inline_rows=0)
    client = make_client(server)
    server.pause_processing()
    client.create_job("validate", BIG[:10])
    with pytest.raises(TimeoutError):
        server.wait_until_processed(timeout=0.2)
    server.resume_processing()
    server.wait_until_processed()
