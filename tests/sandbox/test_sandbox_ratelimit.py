"""Rate limits in windows of any length: headers on every response, 429 with Retry-After
when exceeded, and job endpoints that may bypass the limit."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import pytest

from tap_gtmcli.sandbox import SandboxConfig
from tap_gtmcli.sandbox.ratelimit import TIERS, RateLimiter, RateRule, parse_rate_limit

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
    limiter = RateLimiter(TIERS["free"].rule)
    noon = 1_767_225_600.0 + 12 * 3600  # 2026-01-01T12:00:00Z
    for request in range(100):
        assert limiter.check("key", noon + request).allowed
    refused = limiter.check("key", noon + 100.5)
    assert not refused.allowed
    assert refused.headers["Retry-After"] == str(12 * 3600 - 100)
    assert limiter.check("other-key", noon + 100.5).allowed
    assert limiter.check("key", noon + 12 * 3600).allowed


def test_per_second_windows_are_fixed() -> None:
    limiter = RateLimiter(TIERS["free"].rule, "http-date")
    assert all(limiter.check("key", 1000.0 + n / 10).allowed for n in range(5))
    refused = limiter.check("key", 1000.9)
    assert not refused.allowed
    assert refused.headers["Retry-After"] == "Thu, 01 Jan 1970 00:16:41 GMT"
    assert limiter.check("key", 1001.0).allowed


@pytest.mark.parametrize(("text", "rule"), [
    ("120/60s", RateRule(120, 60)), ("120/min", RateRule(120, 60)), ("50/s", RateRule(50, 1)),
    ("50/1s", RateRule(50, 1)), ("10 / 2min", RateRule(10, 120)),
])
def test_rate_limit_text(text: str, rule: RateRule) -> None:
    assert parse_rate_limit(text) == rule


@pytest.mark.parametrize("text", ["120", "120/60", "0/60s", "5/0s", "many/min", "5/60h"])
def test_bad_rate_limit_text_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        SandboxConfig(rate_limit=text)


def test_per_minute_window_counts_to_the_minute_and_says_when_it_resets() -> None:
    limiter = RateLimiter(parse_rate_limit("120/60s"))
    minute = 1_767_225_600.0  # a multiple of 60
    answers = [limiter.check("key", minute + 10 + n * 0.25) for n in range(121)]
    assert all(answer.allowed for answer in answers[:120])
    assert [a.headers["X-RateLimit-Remaining"] for a in answers[:3]] == ["119", "118", "117"]
    assert answers[0].headers["X-RateLimit-Limit"] == "120"
    assert "X-RateLimit-Tier" not in answers[0].headers
    assert {a.headers["X-RateLimit-Reset"] for a in answers} == {str(int(minute) + 60)}
    refused = answers[120]
    assert not refused.allowed
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    # 10 + 120 * 0.25 = 40 s into the minute: the window opens again in 20 s.
    assert refused.headers["Retry-After"] == "20"
    assert refused.retry_after == pytest.approx(20.0)
    assert limiter.check("key", minute + 60).allowed


def test_a_tier_with_a_rate_limit_keeps_its_daily_quota() -> None:
    config = SandboxConfig(tier="free", rate_limit="3/60s")
    assert config.rate_rule == RateRule(3, 60, 100, "free")
    assert SandboxConfig(tier="growth").rate_rule == RateRule(50, 1, 100_000, "growth")
    assert SandboxConfig().rate_rule is None


def test_job_endpoints_may_bypass_the_limit_with_no_headers(
    make_sandbox: Callable, make_client: Callable
) -> None:
    server = make_sandbox(rate_limit="2/60s", limit_job_endpoints=False)
    client = make_client(server)
    responses = [client.get("/v1/jobs") for _ in range(5)]
    assert {r.status_code for r in responses} == {200}
    assert not {h for r in responses for h in HEADERS} & set(responses[-1].headers)
    assert server.stats()["rate_limited"] == 0


def test_per_minute_limit_over_http(make_sandbox: Callable, make_client: Callable) -> None:
    server = make_sandbox(rate_limit="3/60s")
    client = make_client(server)
    responses = [client.get("/v1/jobs") for _ in range(4)]
    # Four requests may straddle a minute boundary; then all pass in two windows.
    if responses[0].headers["X-RateLimit-Reset"] == responses[-1].headers["X-RateLimit-Reset"]:
        assert [r.status_code for r in responses] == [200, 200, 200, 429]
        retry_after = int(responses[-1].headers["Retry-After"])
        reset = int(responses[-1].headers["X-RateLimit-Reset"])
        assert 1 <= retry_after <= 60
        assert abs(reset - time.time() - retry_after) <= 1.5
    assert {int(r.headers["X-RateLimit-Reset"]) % 60 for r in responses} == {0}
