"""Counters of what the sandbox saw and did, for tests and benchmarks to assert on."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

COUNTER_NAMES = (
    "rate_limited", "errors_injected", "dropped", "truncated", "slowed",
    "webhook_attempts", "webhook_deliveries", "webhook_failures",
)


class SandboxStats:
    """Thread-safe request and event counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._counters: Counter[str] = Counter()
        self._first_request_at: float | None = None
        self._last_answer_at: float | None = None

    def count_request(self, route: str, now: float) -> None:
        """One request on a route pattern such as `GET /v1/jobs/{id}`, arrived at `now`."""
        with self._lock:
            self._requests[route] += 1
            if self._first_request_at is None:
                self._first_request_at = now

    def answered(self, now: float) -> None:
        """An API request was answered at `now` (Unix seconds)."""
        with self._lock:
            self._last_answer_at = now

    def count(self, name: str, amount: int = 1) -> None:
        """Bump one of COUNTER_NAMES."""
        with self._lock:
            self._counters[name] += amount

    def snapshot(self) -> dict[str, Any]:
        """All counters, zeros included, as JSON-ready data."""
        with self._lock:
            counters = {name: self._counters[name] for name in COUNTER_NAMES}
            # The span a client spent on the API: benchmarks time a run by it, leaving
            # out the client's own start-up.
            span = {"first_request_at": self._first_request_at,
                    "last_answer_at": self._last_answer_at}
            return {"requests": dict(self._requests), **counters, **span}

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._requests.clear()
            self._counters.clear()
            self._first_request_at = self._last_answer_at = None
