"""Per-tier rate limits: headers on every response, 429 with Retry-After when exceeded."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import pytest

from tap_gtmcli.sandbox.ratelimit import TIERS, RateLimiter

HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-RateLimit-Tier")


def start_of_next_second() -> None:
    """Sleep to just after a second boundary so a burst fits in one window."""
    time.sleep(math.ceil(time.time()) - time.time() + 0.01)


def test_no_limit_headers_by_default(client: object) -> None:
    response = client.get("/v1/jobs")  # type: ignore[attr-defined]
    assert not set(HEADERS) & set(response.headers)


def test_tiers_table() -> None:
    assert {name: (tier.per_second, tier.per_day) for name, tier in TIERS.items()} == {
        "free": (5, 100), "starter": (25, 10_000), "growth": (50, 100_000),
        "scale": (100, 500_000),
    }


@pytest.mark.parametrize("retry_after_format", ["seconds", "http-date", "none"])
def test_burst_over_the_per_second_limit(
    make_sandbox: Callable, make_client: Callable, retry_after_format: str
) -> None:
    server = make_sandbox(tier="free", retry_after_format=retry_after_format)
    client = make_client(server)
    start_of_next_second()
    responses = [client.get("/v1/jobs") for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["4", "3", "2", "1", "0", "0"]
    for response in responses:
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert response.headers["X-RateLimit-Tier"] == "free"
        reset = int(response.headers["X-RateLimit-Reset"])
        assert 0 < reset - time.time() <= 1.0
    limited = responses[-1]
    assert limited.json()["error"] == "rate_limit_exceeded"
    if retry_after_format == "seconds":
        assert limited.headers["Retry-After"] == "1"
    elif retry_after_format == "http-date":
        moment = parsedate_to_datetime(limited.headers["Retry-After"]).timestamp()
        assert moment == int(limited.headers["X-RateLimit-Reset"])
    else:
        assert "Retry-After" not in limited.headers
    assert server.stats()["rate_limited"] == 1
    # Test routes are never limited.
    assert client.get("/_sandbox/stats").status_code == 200
    start_of_next_second()
    assert client.get("/v1/jobs").status_code == 200


def test_unauthenticated_requests_use_no_quota(
    make_sandbox: Callable, make_client: Callable
) -> None:
    server = make_sandbox(tier="free")
    stranger = make_client(server, "wrong")
    start_of_next_second()
    assert {stranger.get("/v1/jobs").status_code for _ in range(8)} == {401}
    assert make_client(server).get("/v1/jobs").status_code == 200


def test_daily_quota() -> None:
    limiter = RateLimiter("free")
    noon = 1_767_225_600.0 + 12 * 3600  # 2026-01-01T12:00:00Z
    for request in range(100):
        assert limiter.check("key", noon + request).allowed
    refused = limiter.check("key", noon + 100.5)
    assert not refused.allowed
    assert refused.headers["Retry-After"] == str(12 * 3600 - 100)
    assert limiter.check("other-key", noon + 100.5).allowed
    assert limiter.check("key", noon + 12 * 3600).allowed


def test_per_second_windows_are_fixed() -> None:
    limiter = RateLimiter("free", "http-date")
    assert all(limiter.check("key", 1000.0 + n / 10).allowed for n in range(5))
    refused = limiter.check("key", 1000.9)
    assert not refused.allowed
    assert refused.headers["Retry-After"] == "Thu, 01 Jan 1970 00:16:41 GMT"
    assert limiter.check("key", 1001.0).allowed
