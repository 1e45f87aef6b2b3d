"""Per-key request limits counted the ways real APIs count them, plus a daily quota.

The window is `window_seconds` long, whatever the scheme (`RATE_ALGORITHMS`):

- `grid`: windows on the calendar (each multiple of the length in Unix time: a
  one-second window is a calendar second, a 60-second one a calendar minute); `Reset`
  is the window's end, exact.
- `lazy`: a window opens at the first request after the last one closed; `Reset` is
  its end rounded down to whole Unix seconds (so it can name a moment before the end).
- `lazy-ceil`: the same, `Reset` rounded up.
- `sliding`: a log of the requests accepted; at most `requests` in any trailing window;
  `Reset` is when the oldest leaves it, rounded up.
- `token-bucket`: a bucket of `requests` tokens refilled `requests` per window; `Reset`
  is when it is full again, rounded up.

Each answer carries `X-RateLimit-Limit/Remaining/Reset` and a 429 `Retry-After` (the
seconds until a request would pass, rounded up), unless `headers` says otherwise:
`retry-after` sends `Retry-After` on 429s only, `none` sends nothing at all. The plan
tiers keep the one-second windows tests rely on; `parse_rate_limit` builds any other
rule, such as the per-minute window GTMCLI's own example shows.
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate

_RATE_LIMIT_TEXT = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|min|m)\s*$")
RATE_ALGORITHMS = ("grid", "lazy", "lazy-ceil", "sliding", "token-bucket")
RATE_HEADERS = ("all", "retry-after", "none")


@dataclass(frozen=True)
class RateRule:
    """How many requests a key may make per window, and per UTC day (0: no quota)."""

    requests: int
    window_seconds: int = 1
    per_day: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if self.requests < 1 or self.window_seconds < 1 or self.per_day < 0:
            raise ValueError(
                "a rate limit needs at least 1 request per window of at least 1 second"
            )


@dataclass(frozen=True)
class Tier:
    """A plan's limits."""

    name: str
    per_second: int
    per_day: int

    @property
    def rule(self) -> RateRule:
        """The tier as one-second windows with its daily quota."""
        return RateRule(self.per_second, 1, self.per_day, self.name)


TIERS: dict[str, Tier] = {
    "free": Tier("free", 5, 100),
    "starter": Tier("starter", 25, 10_000),
    "growth": Tier("growth", 50, 100_000),
    "scale": Tier("scale", 100, 500_000),
}


def parse_rate_limit(text: str) -> RateRule:
    """`120/60s`, `120/min`, `50/s` or `50/1s`: requests per window of that length."""
    match = _RATE_LIMIT_TEXT.match(text)
    if match is None:
        raise ValueError(
            f"rate limit {text!r} is not REQUESTS/SECONDSs (e.g. 120/60s, 50/s, 120/min)"
        )
    requests, count, unit = int(match[1]), int(match[2] or 1), match[3]
    seconds = count * (60 if unit in ("min", "m") else 1)
    return RateRule(requests, seconds)


@dataclass(frozen=True)
class RateDecision:
    """Whether a request may pass, and the headers that tell the client so."""

    allowed: bool
    headers: dict[str, str]
    retry_after: float = 0.0


@dataclass(frozen=True)
class Count:
    """One scheme's verdict on one request: passed or not, and what it tells of itself."""

    allowed: bool
    remaining: int
    reset: int  # whole Unix seconds
    retry_at: float  # when a refused request would pass


class GridWindows:
    """Windows on the calendar grid."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self._window, self._count = -1, 0

    def count(self, now: float) -> Count:
        window = math.floor(now / self.seconds)
        if window != self._window:
            self._window, self._count = window, 0
        allowed = self._count < self.limit
        self._count += allowed
        end = (window + 1) * self.seconds
        return Count(allowed, self.limit - self._count, math.ceil(end), end)


class LazyWindows:
    """A window opened by the first request after the last one closed."""

    def __init__(self, limit: int, seconds: float, *, round_up: bool = False) -> None:
        self.limit, self.seconds = limit, seconds
        self._round = math.ceil if round_up else math.floor
        self._opened, self._count = -math.inf, 0

    def count(self, now: float) -> Count:
        if now >= self._opened + self.seconds:
            self._opened, self._count = now, 0
        allowed = self._count < self.limit
        self._count += allowed
        end = self._opened + self.seconds
        return Count(allowed, self.limit - self._count, self._round(end), end)


class SlidingLog:
    """At most `limit` accepted requests in any trailing window."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self._accepted: deque[float] = deque()

    def count(self, now: float) -> Count:
        while self._accepted and self._accepted[0] <= now - self.seconds:
            self._accepted.popleft()
        allowed = len(self._accepted) < self.limit
        if allowed:
            self._accepted.append(now)
        oldest_leaves = self._accepted[0] + self.seconds if self._accepted else now
        return Count(allowed, self.limit - len(self._accepted), math.ceil(oldest_leaves),
                     oldest_leaves)


class TokenBucket:
    """`limit` tokens at most, refilled `limit` per window; a request takes one."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self._tokens, self._at = float(limit), -math.inf

    def count(self, now: float) -> Count:
        per_second = self.limit / self.seconds
        self._tokens = min(self.limit, self._tokens + (now - self._at) * per_second)
        self._at = now
        allowed = self._tokens >= 1
        self._tokens -= allowed
        full_at = now + (self.limit - self._tokens) / per_second
        return Count(allowed, math.floor(self._tokens), math.ceil(full_at),
                     now + max(0.0, 1 - self._tokens) / per_second)


Scheme = GridWindows | LazyWindows | SlidingLog | TokenBucket


def scheme(algorithm: str, limit: int, seconds: float) -> Scheme:
    """The counting scheme `algorithm` (one of RATE_ALGORITHMS) for one key."""
    if algorithm == "grid":
        return GridWindows(limit, seconds)
    if algorithm in ("lazy", "lazy-ceil"):
        return LazyWindows(limit, seconds, round_up=algorithm == "lazy-ceil")
    if algorithm == "sliding":
        return SlidingLog(limit, seconds)
    if algorithm == "token-bucket":
        return TokenBucket(limit, seconds)
    raise ValueError(f"rate algorithm {algorithm!r} is not one of {', '.join(RATE_ALGORITHMS)}")


class RateLimiter:
    """Counts requests per key by one scheme, and per UTC day."""

    def __init__(self, rule: RateRule, retry_after_format: str = "seconds",
                 algorithm: str = "grid", headers: str = "all") -> None:
        if headers not in RATE_HEADERS:
            raise ValueError(f"rate headers {headers!r} is not one of {', '.join(RATE_HEADERS)}")
        scheme(algorithm, rule.requests, rule.window_seconds)  # names a bad algorithm now
        self.rule = rule
        self._algorithm = algorithm
        self._retry_after_format = retry_after_format
        self._headers = headers
        self._lock = threading.Lock()
        self._schemes: dict[str, Scheme] = {}
        self._days: dict[str, tuple[int, int]] = {}

    def check(self, key: str, now: float) -> RateDecision:
        """Count one request by `key` at `now`; rejected requests use no quota."""
        rule = self.rule
        day = math.floor(now) // 86_400
        with self._lock:
            counter = self._schemes.get(key)
            if counter is None:
                counter = self._schemes[key] = scheme(
                    self._algorithm, rule.requests, rule.window_seconds)
            day_start, in_day = self._days.get(key, (day, 0))
            if day_start != day:
                in_day = 0
            over_day = bool(rule.per_day) and in_day >= rule.per_day
            # Over the daily quota the window is not asked, so it is not used either.
            verdict = Count(False, 0, math.ceil(now), now) if over_day else counter.count(now)
            in_day += verdict.allowed
            self._days[key] = (day, in_day)
        headers: dict[str, str] = {}
        if self._headers == "all":
            headers = {
                "X-RateLimit-Limit": str(rule.requests),
                "X-RateLimit-Remaining": str(max(0, verdict.remaining)),
                "X-RateLimit-Reset": str(verdict.reset),
            }
            if rule.name:
                headers["X-RateLimit-Tier"] = rule.name
        if verdict.allowed:
            return RateDecision(True, headers)
        # Over the daily quota the wait lasts until the next UTC midnight.
        retry_at = (day + 1) * 86_400 if over_day else verdict.retry_at
        retry_value = self._retry_after_value(retry_at, now)
        if retry_value is not None and self._headers != "none":
            headers["Retry-After"] = retry_value
        return RateDecision(False, headers, retry_after=retry_at - now)

    def _retry_after_value(self, retry_at: float, now: float) -> str | None:
        if self._retry_after_format == "none":
            return None
        if self._retry_after_format == "http-date":
            return formatdate(math.ceil(retry_at), usegmt=True)
        return str(max(1, math.ceil(retry_at - now)))
