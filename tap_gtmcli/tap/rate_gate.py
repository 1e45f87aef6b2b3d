"""One gate that every request of a run passes, so that all workers together stay
under the plan's requests per second.

GTMCLI tells its limit in `X-RateLimit-Limit` (per second) and counts in fixed
one-second windows. The gate spaces request starts a little wider than 1/limit, and
when GTMCLI says the window is spent (`X-RateLimit-Remaining: 0`) or answers 429, it
holds back every worker, not only the one that was told: a second worker would
otherwise spend its own request learning the same thing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

#: Share of the advertised rate the gate aims at: the server counts by its own clock,
#: so requests spaced exactly 1/limit apart can land 1 over in a window.
RATE_SAFETY = 0.9
#: Longest hold after `X-RateLimit-Remaining: 0`: the window is one second, and a
#: `X-RateLimit-Reset` further out than that says our clock and GTMCLI's disagree.
MAX_WINDOW_HOLD = 1.0


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class RateGate:
    """Spaces request starts across threads and holds them all after a 429."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        wait: Callable[[float], object] | None = None,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        # Not time.sleep: a retrying worker's own backoff sleep is the retry policy's
        # business (and what tests count); the gate's waits are separate.
        self._wait = wait or threading.Event().wait
        self._lock = threading.Lock()
        self._interval = 0.0
        self._next_start = 0.0
        self._held_until = 0.0
        self._held_by: int | None = None

    def wait_turn(self) -> None:
        """Block until this thread may start a request."""
        me = threading.get_ident()
        with self._lock:
            now = self._clock()
            start = max(now, self._next_start)
            if me != self._held_by:
                # The thread that was told to wait is already backing off by itself.
                start = max(start, self._held_until)
            elif start >= self._held_until:
                self._held_by = None
            self._next_start = start + self._interval
        if start > now:
            self._wait(start - now)

    def observe(
        self, status: int, headers: Mapping[str, str], retry_after: float | None = None
    ) -> None:
        """Learn the limit from an answer's headers; hold everyone after a 429."""
        limit = _number(headers.get("X-RateLimit-Limit"))
        remaining = _number(headers.get("X-RateLimit-Remaining"))
        reset = _number(headers.get("X-RateLimit-Reset"))
        with self._lock:
            now = self._clock()
            if limit is not None and limit > 0:
                self._interval = 1.0 / (limit * RATE_SAFETY)
            if status < 400 and threading.get_ident() == self._held_by:
                # The retry of the request that was told to wait went through: the
                # window is open again for everyone.
                self._held_until = min(self._held_until, now)
                self._next_start = min(self._next_start, now + self._interval)
                self._held_by = None
            hold: float | None = None
            if status == 429:
                hold = retry_after if retry_after is not None else self._until_reset(reset)
            elif remaining is not None and remaining <= 0:
                hold = self._until_reset(reset)
            if hold is not None and now + hold > self._held_until:
                self._held_until = now + hold
                self._held_by = threading.get_ident() if status == 429 else None

    def _until_reset(self, reset: float | None) -> float:
        if reset is None:
            return MAX_WINDOW_HOLD
        return min(max(reset - self._wall_clock(), 0.0), MAX_WINDOW_HOLD)
