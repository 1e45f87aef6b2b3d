"""Per-key request limits of the GTMCLI plan tiers, in fixed one-second windows."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from email.utils import formatdate


@dataclass(frozen=True)
class Tier:
    """A plan's limits."""

    name: str
    per_second: int
    per_day: int


TIERS: dict[str, Tier] = {
    "free": Tier("free", 5, 100),
    "starter": Tier("starter", 25, 10_000),
    "growth": Tier("growth", 50, 100_000),
    "scale": Tier("scale", 100, 500_000),
}


@dataclass(frozen=True)
class RateDecision:
    """Whether a request may pass, and the headers that tell the client so."""

    allowed: bool
    headers: dict[str, str]
    retry_after: float = 0.0


class RateLimiter:
    """Counts requests per key per second and per UTC day."""

    def __init__(self, tier_name: str, retry_after_format: str = "seconds") -> None:
        self.tier = TIERS[tier_name]
        self._retry_after_format = retry_after_format
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int]] = {}
        self._days: dict[str, tuple[int, int]] = {}

    def check(self, key: str, now: float) -> RateDecision:
        """Count one request by `key` at `now`; rejected requests use no quota."""
        window = math.floor(now)
        day = window // 86_400
        with self._lock:
            window_start, in_window = self._windows.get(key, (window, 0))
            if window_start != window:
                in_window = 0
            day_start, in_day = self._days.get(key, (day, 0))
            if day_start != day:
                in_day = 0
            allowed = in_window < self.tier.per_second and in_day < self.tier.per_day
            if allowed:
                in_window += 1
                in_day += 1
            self._windows[key] = (window, in_window)
            self._days[key] = (day, in_day)
        reset = window + 1
        headers = {
            "X-RateLimit-Limit": str(self.tier.per_second),
            "X-RateLimit-Remaining": str(max(0, self.tier.per_second - in_window)),
            "X-RateLimit-Reset": str(reset),
            "X-RateLimit-Tier": self.tier.name,
        }
        if allowed:
            return RateDecision(True, headers)
        # Over the daily quota the wait lasts until the next UTC midnight.
        retry_at = (day + 1) * 86_400 if in_day >= self.tier.per_day else reset
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

