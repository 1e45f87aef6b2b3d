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

    def count_request(self, route: str) -> None:
        """One request on a route pattern such as `GET /v1/jobs/{id}`."""
        with self._lock:
            self._requests[route] += 1

    def count(self, name: str, amount: int = 1) -> None:
        """Bump one of COUNTER_NAMES."""
        with self._lock:
            self._counters[name] += amount

    def snapshot(self) -> dict[str, Any]:
        """All counters, zeros included, as JSON-ready data."""
        with self._lock:
            counters = {name: self._counters[name] for name in COUNTER_NAMES}
            return {"requests": dict(self._requests), **counters}

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._requests.clear()
            self._counters.clear()
