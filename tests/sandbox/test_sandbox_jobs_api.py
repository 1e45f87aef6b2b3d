"""The documented jobs endpoints: create, status, list, results, auth and errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tap_gtmcli.sandbox import SandboxServer, job_cost
from tap_gtmcli.sandbox.outcomes import find_email, validate_email
from tests.helpers.keys import API_KEY

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
EMAILS = [{"email": "ceo@example.com"}, {"email": "test@fake.com"}, {"email": "info@acme.com"}]


def assert_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


# Authentication


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", API_KEY, f"Basic {API_KEY}", "Bearer ", f"Bearer {API_KEY}2"],
)
def test_requests_without_the_right_bearer_key_are_401(
    sandbox: SandboxServer, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with requests.Session() as session:
        session.trust_env = False
        for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/x"),
                             ("GET", "/_sandbox/stats")):
            response = session.request(method, sandbox.url + path, headers=headers, timeout=5)
            body = assert_error(response, 401, "unauthorized")
            assert API_KEY not in body["message"]


def test_bearer_scheme_is_case_insensitive(sandbox: SandboxServer, make_client: Callable) -> None:
    client = make_client(sandbox)
    client.session.headers["Authorization"] = f"bearer {API_KEY}"
    assert client.get("/v1/jobs").status_code == 200


def test_configured_api_key(make_sandbox: Callable, make_client: Callable) -> None:
    server = make_sandbox(api_key="gtm_live_custom")
    assert make_client(server, "gtm_live_custom").get("/v1/jobs").status_code == 200
    assert_error(make_client(server).get("/v1/jobs"), 401, "unauthorized")


# Create


def test_create_returns_pending_job_object(client: Any) -> None:
    response = client.post("/v1/jobs", json={"type": "validate", "data": EMAILS})
    assert response.status_code == 201
    job = response.json()
    assert re.fullmatch(r"job_[0-9a-f]{12}", job["id"])
    assert ISO_UTC.match(job["created_at"])
    assert job == {
        "id": job["id"], "type": "validate", "status": "pending", "total": 3, "completed": 0,
        "credits_used": None, "created_at": job["created_at"], "completed_at": None,
    }


def test_create_does_not_echo_webhook_url(client: Any) -> None:
    response = client.post("/v1/jobs", json={
        "type": "find", "data": [{"first_name": "Tim", "last_name": "Cook", "domain": "apple.com"}],
        "webhook_url": "http://127.0.0.1:9/hook",
    })
    assert response.status_code == 201
    assert "webhook_url" not in response.json()
    assert "webhook_url" not in client.get(f"/v1/jobs/{response.json()['id']}").json()


@pytest.mark.parametrize("status", [200, 201, 202])
def test_create_status_is_configurable(
    make_sandbox: Callable, make_client: Callable, status: int
) -> None:
    client = make_client(make_sandbox(create_status=status))
    response = client.post("/v1/jobs", json={"type": "validate", "data": EMAILS})
    assert response.status_code == status
    assert response.json()["status"] == "pending"


@pytest.mark.parametrize(
    "body",
    [
        {"data": EMAILS},
        {"type": "verify", "data": EMAILS},
        {"type": None, "data": EMAILS},
        {"type": 1, "data": EMAILS},
        {"type": "validate"},
        {"type": "validate", "data": []},
        {"type": "validate", "data": {"email": "a@b.com"}},
        {"type": "validate", "data": "a@b.com"},
        {"type": "validate", "data": ["a@b.com"]},
        {"type": "validate", "data": [{"email": "a@b.com"}, None]},
        {"type": "validate", "data": [{"mail": "a@b.com"}]},
        {"type": "validate", "data": [{"email": 42}]},
        {"type": "validate", "data": [{"email": None}]},
        {"type": "find", "data": [{"first_name": "Tim", "last_name": "Cook"}]},
        {"type": "find", "data": [{"first_name": "Tim", "domain": "apple.com"}]},
        {"type": "find", "data": [{"last_name": "Cook", "domain": "apple.com"}]},
        {"type": "find", "data": [{"first_name": ["Tim"], "last_name": "Cook",
                                   "domain": "apple.com"}]},
        {"type": "find", "data": EMAILS},
        {"type": "validate", "data": EMAILS, "webhook_url": "ftp://example.com"},
        {"type": "validate", "data": EMAILS, "webhook_url": 5},
        ["validate"],
    ],
)
def test_create_rejects_bad_bodies_with_400(client: Any, sandbox: SandboxServer, body: Any) -> None:
    assert_error(client.post("/v1/jobs", json=body), 400, "invalid_request")
    assert client.get("/v1/jobs").json() == {"jobs": []}


@pytest.mark.parametrize("raw", [b"", b"not json", b"{\"type\": \"validate\",", b"\xff\xfe"])
def test_create_rejects_non_json_bodies(client: Any, raw: bytes) -> None:
    response = client.post("/v1/jobs", data=raw, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_request")


def test_create_rejects_more_than_100000_items(client: Any) -> None:
    too_many = [{"email": f"p{n}@gmail.com"} for n in range(100_001)]
    body = assert_error(client.post("/v1/jobs", json={"type": "validate", "data": too_many}),
                        400, "invalid_request")
    assert "100000" in body["message"]
    assert client.get("/v1/jobs").json() == {"jobs": []}


def test_create_names_the_offending_item(client: Any) -> None:
    response = client.post("/v1/jobs", json={"type": "validate",
                                             "data": [{"email": "a@b.com"}, {"name": "x"}]})
    assert "data[1]" in assert_error(response, 400, "invalid_request")["message"]


# Status


def test_get_job_when_completed(client: Any) -> None:
    job_id = client.create_job("validate", EMAILS)
    job = client.get(f"/v1/jobs/{job_id}").json()
    expected_cost = job_cost("validate", [validate_email(item["email"]) for item in EMAILS])
    assert job["status"] == "completed"
    assert job["completed"] == job["total"] == 3
    assert job["credits_used"] == expected_cost
    assert isinstance(job["credits_used"], float)
    assert ISO_UTC.match(job["completed_at"])
    assert job["completed_at"] >= job["created_at"]
    assert "error" not in job


def test_unknown_job_is_404(client: Any) -> None:
    assert_error(client.get("/v1/jobs/job_000000000000"), 404, "not_found")
    assert_error(client.get("/v1/jobs/job_000000000000/results"), 404, "not_found")


def test_unknown_routes_and_methods(client: Any) -> None:
    assert_error(client.get("/v2/jobs"), 404, "not_found")
    assert_error(client.get("/v1/jobs/abc/other"), 404, "not_found")
    response = client.delete("/v1/jobs")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "GET, POST"
    assert_error(client.request("PUT", "/v1/jobs/abc"), 405, "method_not_allowed")


# List


def test_list_is_newest_first_with_insertion_order_breaking_ties(client: Any) -> None:
    created = [client.create_job("validate", [{"email": f"p{n}@gmail.com"}]) for n in range(5)]
    listed = client.get("/v1/jobs").json()
    assert list(listed) == ["jobs"]
    assert [job["id"] for job in listed["jobs"]] == created[::-1]
    assert all(job["status"] == "completed" for job in listed["jobs"])


def test_paginated_list_shape(make_sandbox: Callable, make_client: Callable) -> None:
    server = make_sandbox(list_page_size=2)
    client = make_client(server)
    created = [client.create_job("validate", [{"email": f"p{n}@gmail.com"}]) for n in range(5)]
    newest_first = created[::-1]
    first = client.get("/v1/jobs").json()
    assert first == {"jobs": first["jobs"], "page": 1, "per_page": 2, "total": 5,
                     "total_pages": 3}
    assert [job["id"] for job in first["jobs"]] == newest_first[:2]
    third = client.get("/v1/jobs", params={"page": 3}).json()
    assert [job["id"] for job in third["jobs"]] == newest_first[4:]
    past = client.get("/v1/jobs", params={"page": 4}).json()
    assert past["jobs"] == []
    wide = client.get("/v1/jobs", params={"per_page": 5000}).json()
    assert wide["per_page"] == 1000
    assert [job["id"] for job in wide["jobs"]] == newest_first
    assert_error(client.get("/v1/jobs", params={"page": 0}), 400, "invalid_request")
    assert_error(client.get("/v1/jobs", params={"per_page": "x"}), 400, "invalid_request")


# Results


def test_results_paging_caps_and_order(client: Any, sandbox: SandboxServer) -> None:
    items = [{"email": f"person{n}@company{n % 7}.com"} for n in range(2500)]
    job_id = client.create_job("validate", items)
    first = client.get(f"/v1/jobs/{job_id}/results").json()
    assert first["page"] == 1
    assert first["per_page"] == 100
    assert first["total"] == 2500
    assert first["total_pages"] == 25
    assert [row["email"] for row in first["results"]] == [item["email"] for item in items[:100]]
    assert first["results"] == [validate_email(item["email"]) for item in items[:100]]

    capped = client.get(f"/v1/jobs/{job_id}/results", params={"per_page": 5000, "page": 2}).json()
    assert capped["per_page"] == 1000
    assert capped["total_pages"] == 3
    assert [row["email"] for row in capped["results"]] == [
        item["email"] for item in items[1000:2000]
    ]
    last = client.get(f"/v1/jobs/{job_id}/results", params={"per_page": 1000, "page": 3}).json()
    assert len(last["results"]) == 500
    past = client.get(f"/v1/jobs/{job_id}/results", params={"per_page": 1000, "page": 4}).json()
    assert past == {"results": [], "page": 4, "per_page": 1000, "total": 2500, "total_pages": 3}

    every_row = []
    for page in range(1, 8):
        response = client.get(f"/v1/jobs/{job_id}/results", params={"page": page, "per_page": 400})
        every_row.extend(response.json()["results"])
    assert [row["email"] for row in every_row] == [item["email"] for item in items]


@pytest.mark.parametrize(
    "params", [{"page": 0}, {"page": -1}, {"page": "one"}, {"per_page": 0}, {"per_page": -5},
               {"per_page": "1.5"}],
)
def test_results_reject_bad_paging(client: Any, params: dict[str, Any]) -> None:
    job_id = client.create_job("validate", EMAILS)
    assert_error(client.get(f"/v1/jobs/{job_id}/results", params=params), 400, "invalid_request")


def test_find_results(client: Any) -> None:
    people = [{"first_name": "Tim", "last_name": "Cook", "domain": "apple.com"},
              {"first_name": "Satya", "last_name": "Nadella", "domain": "microsoft.com"},
              {"first_name": "Zoë", "last_name": "", "domain": "acme.com"}]
    job_id = client.create_job("find", people)
    rows = client.get(f"/v1/jobs/{job_id}/results").json()["results"]
    assert rows == [find_email(p["first_name"], p["last_name"], p["domain"]) for p in people]
    assert rows[0]["email"] == "tim.cook@apple.com"
    assert rows[2] == {"email": None, "status": "not_found", "convention": None,
                       "confidence": 0.0, "provider": rows[2]["provider"]}
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["credits_used"] == job_cost("find", rows)


def test_same_input_gives_identical_rows_across_jobs_and_servers(
    client: Any, make_sandbox: Callable, make_client: Callable
) -> None:
    items = [{"email": f"someone{n}@globex.io"} for n in range(50)]
    first = client.get(f"/v1/jobs/{client.create_job('validate', items)}/results").content
    second = client.get(f"/v1/jobs/{client.create_job('validate', items)}/results").content
    other = make_client(make_sandbox())
    third = other.get(f"/v1/jobs/{other.create_job('validate', items)}/results").content
    assert first == second == third


# Credits


def test_credits_are_deducted_exactly(client: Any, sandbox: SandboxServer) -> None:
    start = sandbox.credits_balance()
    rows = [validate_email(item["email"]) for item in EMAILS]
    client.create_job("validate", EMAILS)
    assert sandbox.credits_balance() == start - job_cost("validate", rows)
    assert client.get("/_sandbox/stats").json()["credits_balance"] == sandbox.credits_balance()


def test_insufficient_credits_is_402_and_creates_nothing(
    make_sandbox: Callable, make_client: Callable
) -> None:
    valid_items = [{"email": f"user{n}@gmail.com"} for n in range(200)]
    cost = job_cost("validate", [validate_email(item["email"]) for item in valid_items])
    server = make_sandbox(credits=cost - 0.25)
    client = make_client(server)
    assert_error(client.post("/v1/jobs", json={"type": "validate", "data": valid_items}),
                 402, "insufficient_credits")
    assert client.get("/v1/jobs").json() == {"jobs": []}
    assert server.credits_balance() == cost - 0.25
    # Free rows cost nothing, so an all-invalid job still fits.
    client.create_job("validate", [{"email": "broken"}])
    assert server.credits_balance() == cost - 0.25


def test_exact_balance_is_enough(make_sandbox: Callable, make_client: Callable) -> None:
    server = make_sandbox(credits=1.0)
    client = make_client(server)
    people = [{"first_name": "Tim", "last_name": "Cook", "domain": "apple.com"}]
    client.create_job("find", people)
    assert server.credits_balance() == 0.0
    assert_error(client.post("/v1/jobs", json={"type": "find", "data": people}),
                 402, "insufficient_credits")


@pytest.mark.parametrize("per_page", [1, 7, 99, 100, 101, 250, 1000])
def test_every_page_size_reassembles_the_rows_in_order(
    client: Any, sandbox: SandboxServer, per_page: int
) -> None:
    job_id = sandbox.seed_jobs("validate", 345)[0]
    expected = [validate_email(item["email"]) for item in sandbox.job_items(job_id)]
    rows: list[dict[str, Any]] = []
    for page in range(1, 346 // per_page + 3):
        response = client.get(f"/v1/jobs/{job_id}/results",
                              params={"page": page, "per_page": per_page})
        rows.extend(response.json()["results"])
    assert rows == expected
