"""Per-key request limits in fixed windows of any length, plus a daily quota.

A window of `window_seconds` starts at each multiple of that length in Unix time (so a
one-second window is a calendar second and a 60-second one a calendar minute), and
`X-RateLimit-Reset` names its end in whole Unix seconds. The plan tiers keep the
one-second windows tests rely on; `parse_rate_limit` builds any other rule, such as the
per-minute window GTMCLI's own example shows.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from email.utils import formatdate

_RATE_LIMIT_TEXT = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|min|m)\s*$")


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


class RateLimiter:
    """Counts requests per key per window and per UTC day."""

    def __init__(self, rule: RateRule, retry_after_format: str = "seconds") -> None:
        self.rule = rule
        self._retry_after_format = retry_after_format
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int]] = {}
        self._days: dict[str, tuple[int, int]] = {}

    def check(self, key: str, now: float) -> RateDecision:
        """Count one request by `key` at `now`; rejected requests use no quota."""
        rule = self.rule
        window = math.floor(now / rule.window_seconds)
        day = math.floor(now) // 86_400
        with self._lock:
            window_start, in_window = self._windows.get(key, (window, 0))
            if window_start != window:
                in_window = 0
            day_start, in_day = self._days.get(key, (day, 0))
            if day_start != day:
                in_day = 0
            over_day = bool(rule.per_day) and in_day >= rule.per_day
            allowed = in_window < rule.requests and not over_day
            if allowed:
                in_window += 1
                in_day += 1
            self._windows[key] = (window, in_window)
            self._days[key] = (day, in_day)
        reset = (window + 1) * rule.window_seconds
        headers = {
            "X-RateLimit-Limit": str(rule.requests),
            "X-RateLimit-Remaining": str(max(0, rule.requests - in_window)),
            "X-RateLimit-Reset": str(reset),
        }
        if rule.name:
            headers["X-RateLimit-Tier"] = rule.name
        if allowed:
            return RateDecision(True, headers)
        # Over the daily quota the wait lasts until the next UTC midnight.
        retry_at = (day + 1) * 86_400 if over_day else reset
        retry_value = self._retry_after_value(retry_at, now)
        if retry_value is not None:
            headers["Retry-After"] = retry_value
        return RateDecision(False, headers, retry_after=retry_at - now)

    def _retry_after_value(self, retry_at: int, now: float) -> str | None:
        if self._retry_after_format == "none":
            return None
        if self._retry_after_format == "http-date":
            return formatdate(retry_at, usegmt=True)
        return str(max(1, math.ceil(retry_at - now)))
