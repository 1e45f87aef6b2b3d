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


# --- the zoo: the ways real APIs count -------------------------------------------------

MINUTE = 1_767_225_600.0  # a multiple of 60


def counted(limiter: RateLimiter, *moments: float) -> list[tuple[bool, str, str]]:
    """(passed, Remaining, Reset) for requests at `moments` after MINUTE."""
    answers = [limiter.check("key", MINUTE + moment) for moment in moments]
    return [(a.allowed, a.headers["X-RateLimit-Remaining"], a.headers["X-RateLimit-Reset"])
            for a in answers]


def test_lazy_windows_open_at_the_first_request_and_round_reset_down_or_up() -> None:
    rule = RateRule(2, 10)
    for algorithm, reset in [("lazy", MINUTE + 13), ("lazy-ceil", MINUTE + 14)]:
        limiter = RateLimiter(rule, algorithm=algorithm)
        # Opened at 3.6 s: it ends at 13.6 s, told as 13 (rounded down) or 14 (up).
        assert counted(limiter, 3.6, 5, 13.5) == [
            (True, "1", str(int(reset))), (True, "0", str(int(reset))),
            (False, "0", str(int(reset)))]
        refused = limiter.check("key", MINUTE + 13.5)
        assert refused.headers["Retry-After"] == "1"  # 0.1 s, rounded up
        assert refused.retry_after == pytest.approx(0.1)
        # The next window opens at the first request after 13.6 s, not on a grid.
        assert counted(limiter, 13.7) == [(True, "1", str(int(reset) + 10))]


def test_a_sliding_log_counts_the_trailing_window_and_resets_when_the_oldest_leaves() -> None:
    limiter = RateLimiter(RateRule(3, 10), algorithm="sliding")
    assert counted(limiter, 0.5, 4.2, 9.9) == [
        (True, "2", str(int(MINUTE) + 11)), (True, "1", str(int(MINUTE) + 11)),
        (True, "0", str(int(MINUTE) + 11))]
    # A calendar window would have opened at 10 s; the log frees a place at 10.5 s only.
    refused = limiter.check("key", MINUTE + 10.2)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.3)
    assert counted(limiter, 10.6) == [(True, "0", str(int(MINUTE) + 15))]  # 4.2 s + 10
    assert not limiter.check("key", MINUTE + 14.1).allowed
    assert limiter.check("key", MINUTE + 14.3).allowed


def test_a_token_bucket_refills_its_limit_per_window() -> None:
    limiter = RateLimiter(RateRule(4, 8), algorithm="token-bucket")  # one token per 2 s
    assert [passed for passed, _, _ in counted(limiter, 0, 0, 0, 0, 0)] == [True] * 4 + [False]
    refused = limiter.check("key", MINUTE + 1)
    assert refused.retry_after == pytest.approx(1.0)  # the next token, at 2 s
    # Reset: when the bucket is full again (8 s after it emptied at 0).
    assert counted(limiter, 2) == [(True, "0", str(int(MINUTE) + 10))]
    assert counted(limiter, 2.5) == [(False, "0", str(int(MINUTE) + 10))]
    assert counted(limiter, 100) == [(True, "3", str(int(MINUTE) + 102))]  # full, less one


def test_the_grid_is_the_calendar_whatever_the_first_request() -> None:
    limiter = RateLimiter(RateRule(2, 10), algorithm="grid")
    assert counted(limiter, 3.6, 5, 9.9, 10) == [
        (True, "1", str(int(MINUTE) + 10)), (True, "0", str(int(MINUTE) + 10)),
        (False, "0", str(int(MINUTE) + 10)), (True, "1", str(int(MINUTE) + 20))]


@pytest.mark.parametrize("headers", ["retry-after", "none"])
def test_a_limiter_may_send_retry_after_only_or_nothing_at_all(headers: str) -> None:
    limiter = RateLimiter(RateRule(1, 60), headers=headers)
    passed = limiter.check("key", MINUTE)
    refused = limiter.check("key", MINUTE + 1)
    assert passed.allowed and passed.headers == {}
    assert not refused.allowed
    assert refused.headers == ({"Retry-After": "59"} if headers == "retry-after" else {})


@pytest.mark.parametrize("algorithm", ["grid", "lazy", "lazy-ceil", "sliding", "token-bucket"])
def test_every_algorithm_answers_over_http_with_its_headers(
    make_sandbox: Callable, make_client: Callable, algorithm: str
) -> None:
    server = make_sandbox(rate_limit="2/30s", rate_algo=algorithm)
    client = make_client(server)
    responses = [client.get("/v1/jobs") for _ in range(3)]
    codes = [r.status_code for r in responses]
    resets = {r.headers["X-RateLimit-Reset"] for r in responses}
    if algorithm == "grid" and len(resets) > 1:  # a calendar window ended in between
        assert codes == [200, 200, 200]
        return
    assert codes == [200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["1", "0", "0"]
    assert 1 <= int(responses[-1].headers["Retry-After"]) <= 30
    assert server.stats()["rate_limited"] == 1


@pytest.mark.parametrize(("setting", "value"), [("rate_algo", "fixed"), ("rate_headers", "some")])
def test_an_unknown_algorithm_or_header_mode_is_refused_naming_it(setting: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{setting} must be one of .*{value}"):
        SandboxConfig(**{setting: value})
