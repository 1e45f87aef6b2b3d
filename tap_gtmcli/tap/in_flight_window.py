"""How many requests a run keeps in flight at once: as many as the API's pace needs, and
never more than a polite bound.

- With an advertised limit, Little's law: in flight = allowed rate x latency. The window
  follows the measured latency (a moving average) and keeps some headroom, so that the
  rate gate always has a request ready when the next start is due. When all the run
  still has to request fits in the window being filled, all of it may be in flight.
- Without one (GTMCLI's job endpoints may send no limit headers), AIMD over rounds (a
  round ends once as many answers came back as the window held when it began):
  slow start doubles the window while throughput grows with it; after that the window
  grows by one per round while latency stays near its floor (the server is not queueing
  our requests, so by Little's law throughput still grows with the window) and gives
  one back while latency shows the server queueing them; a 429, a 5xx
  or a timeout halves it, once per round. It grows only in rounds where it was the
  bound, so a run with little to fetch does not inflate it.
- Both are bounded by `upper`: `max_parallel_requests` when set, else POLITE_CAP without
  a limit and LIMITED_CAP with one (a limit says how much the server accepts).
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable

#: Requests in flight at most when GTMCLI advertises no limit: polite to a shared API
#: and, at 300 ms a page, already over 100 pages a second.
POLITE_CAP = 32
#: Requests in flight at most when the pace comes from an advertised limit: 50 requests
#: a second at 800 ms need 40 in flight.
LIMITED_CAP = 64
#: Where AIMD starts: what the tap always kept in flight before the window sized itself.
INITIAL_WINDOW = 8
#: In flight above rate x latency, so that a paced start never waits for a free worker.
HEADROOM = 1.25
#: Weight of the newest latency in the moving average.
LATENCY_WEIGHT = 0.2
#: Latency up to this multiple of the fastest answer seen means the server is not yet
#: queueing our requests; above QUEUEING, it is, and the window gives one back.
LATENCY_TOLERANCE = 1.5
QUEUEING = 2.0
#: In slow start, the window doubles again only if throughput grew by at least this
#: share of what the doubling promised.
GROWTH_SHARE = 0.5


class Outcome(enum.Enum):
    """How a request ended, as far as the pace is concerned."""

    ANSWERED = "answered"  # any answer that is not a 429 or a 5xx
    THROTTLED = "throttled"  # 429
    FAILED = "failed"  # 5xx, timeout, dropped connection, truncated body


class InFlightWindow:
    """The number of requests that may be in flight now; fed by every request's outcome."""

    def __init__(
        self,
        *,
        allowed_rate: Callable[[], float | None],
        upper: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._allowed_rate = allowed_rate
        self._upper = upper
        self._clock = clock
        self._lock = threading.Lock()
        self._aimd = float(min(INITIAL_WINDOW, self._cap(limited=False)))
        self._slow_start = True
        self.latency: float | None = None
        self.fastest: float | None = None
        self._round_started = clock()
        self._round_answers = 0
        self._round_size = self._aimd
        self._round_was_bound = False
        self._round_decreased = False
        self._previous_rate: tuple[float, float] | None = None  # (window, answers/s)

    @property
    def size(self) -> int:
        """Requests that may be in flight now."""
        rate = self._allowed_rate()
        with self._lock:
            if rate == math.inf:
                return self._cap(limited=True)  # the gate lets all that is left go now
            if rate is not None and self.latency is not None:
                wanted = math.ceil(rate * self.latency * HEADROOM) + 1
                return max(1, min(wanted, self._cap(limited=True)))
            return max(1, int(self._aimd))

    def bound(self) -> None:
        """Say that a request was ready but the window was full."""
        with self._lock:
            self._round_was_bound = True

    def record(self, latency: float, outcome: Outcome) -> None:
        """Take one request's latency and outcome into account."""
        with self._lock:
            if outcome is Outcome.ANSWERED:
                self.latency = latency if self.latency is None else (
                    LATENCY_WEIGHT * latency + (1 - LATENCY_WEIGHT) * self.latency)
                self.fastest = latency if self.fastest is None else min(self.fastest, latency)
            elif not self._round_decreased:
                self._aimd = max(1.0, self._aimd / 2)
                self._slow_start = False
                self._round_decreased = True
            self._round_answers += 1
            if self._round_answers >= self._round_size:
                self._end_round()

    def _end_round(self) -> None:
        now = self._clock()
        elapsed = now - self._round_started
        answers_per_second = self._round_answers / elapsed if elapsed > 0 else None
        if self._round_was_bound and not self._round_decreased and answers_per_second:
            self._grow(answers_per_second)
        self._round_started = now
        self._round_answers = 0
        self._round_size = self._aimd
        self._round_was_bound = False
        self._round_decreased = False

    def _grow(self, answers_per_second: float) -> None:
        cap = self._cap(limited=False)
        if self._slow_start:
            previous = self._previous_rate
            self._previous_rate = (self._aimd, answers_per_second)
            if previous is not None and previous[0] < self._aimd:
                promised = self._aimd / previous[0] - 1
                if answers_per_second < previous[1] * (1 + GROWTH_SHARE * promised):
                    self._slow_start = False
                    return
            self._aimd = min(float(cap), self._aimd * 2)
            return
        if self.latency is None or self.fastest is None:
            return
        if self.latency <= self.fastest * LATENCY_TOLERANCE:
            self._aimd = min(float(cap), self._aimd + 1)
        elif self.latency > self.fastest * QUEUEING:
            self._aimd = max(1.0, self._aimd - 1)

    def _cap(self, *, limited: bool) -> int:
        if self._upper is not None:
            return max(1, self._upper)
        return LIMITED_CAP if limited else POLITE_CAP

    @property
    def upper(self) -> int:
        """The most requests that may ever be in flight."""
        return self._cap(limited=True) if self._upper is None else max(1, self._upper)
