"""One gate that every request of a run passes, so that all workers together stay within
the plan's rate limit, whatever the length of its window.

GTMCLI tells its limit in `X-RateLimit-Limit` (requests in the current window),
`X-RateLimit-Remaining` and `X-RateLimit-Reset` (Unix seconds when the window ends); its
own example is a per-minute window, and job endpoints may send none of these. The gate
never assumes a window length:

- No limit headers at all: the gate does not pace (the in-flight window does the rest).
- The first window seen, of unknown length: the requests it still allows are spread
  over the time it has left, every request started since the answer that told us
  `Remaining` counted against it too (GTMCLI will count it).
- Once the length is known (two `Reset`s in a row, or the first window's time left in
  whole seconds until then), each window's limit is spread evenly over its length,
  a little under it (STEADY_SHARE, lowered by each 429). Counting requests in flight
  against the told window instead would stall a slow link, since GTMCLI counts each
  request when it arrives, often in the next window; even spacing keeps every window
  within its limit wherever its boundary falls.
- When all the run still has to request fits in what the window allows, nothing is
  spread: it goes at once.
- A window that is spent (`Remaining: 0`) holds every worker until its `Reset`.
- A 429 holds every other worker for `Retry-After` exactly (seconds or an HTTP date,
  parsed by the caller), or until `Reset`: a second worker would otherwise spend its own
  request learning the same thing. The worker told to wait backs off by its retry policy.
  Starts booked before the news are checked again when they come (`recheck`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

#: How long everyone waits after a 429 or `Remaining: 0` that names no moment to resume
#: (no `Retry-After`, no `Reset`): long enough to stop a storm, short enough to find out.
UNNAMED_HOLD = 1.0
#: Share of a window's limit its even spacing aims at: requests reach the server with
#: some jitter (a loaded machine delays a thread by tens of milliseconds), and a 429
#: holds everyone for its whole Retry-After, so a little slack is cheaper than a 429.
STEADY_SHARE = 0.96
#: Each 429 all the same takes this much off the share, down to MIN_SHARE.
SHARE_AFTER_429 = 0.9
MIN_SHARE = 0.75


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class _WindowInfo:
    """What the newest answer said about the window, and which request it answered."""

    ticket: int
    observed_at: float
    limit: int | None
    remaining: int
    #: On the gate's own clock (the header is wall-clock Unix seconds).
    reset_at: float | None


class RateGate:
    """Spaces request starts across threads by the advertised window; holds all after a 429."""

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
        self._local = threading.local()
        self._tickets = 0
        self._next_start = 0.0
        self._held_until = 0.0
        self._held_by: int | None = None
        self._info: _WindowInfo | None = None
        self._last_reset_wall: float | None = None
        self._demand: int | None = None
        #: Counts 429s and spent windows, so that booked starts know to look again.
        self._news = 0
        self._booked_news: dict[int, int] = {}
        #: Seconds per window once two consecutive `Reset`s have shown it.
        self.window_seconds: float | None = None
        self._first_window_guess: float | None = None
        self._share = STEADY_SHARE

    def expect(self, requests_left: int | None) -> None:
        """Tell the gate how many requests the run still has to make (None: unknown)."""
        with self._lock:
            self._demand = requests_left

    def allowed_rate(self) -> float | None:
        """Requests per second the plan allows now; None when nothing needs pacing."""
        with self._lock:
            info = self._info
            if info is None or info.limit is None or info.reset_at is None:
                return None
            if self._demand is not None and self._demand <= info.remaining:
                return None
            if self.window_seconds:
                return info.limit / self.window_seconds
            return max(info.remaining, 1) / max(info.reset_at - info.observed_at, 1e-3)

    def reserve(self, worker: int | None = None) -> tuple[int, float]:
        """Book the next request start: its ticket, and the seconds to wait before it."""
        with self._lock:
            ticket = self._tickets
            self._tickets += 1
            return ticket, self._book(ticket, worker)

    def recheck(self, ticket: int, worker: int | None = None) -> float:
        """Seconds more to wait before a booked start, when news came in since booking."""
        with self._lock:
            if self._booked_news.get(ticket) == self._news:
                self._booked_news.pop(ticket, None)
                return 0.0
            return self._book(ticket, worker)

    def wait_turn(self) -> None:
        """Block until this thread may start a request."""
        ticket, delay = self.reserve()
        self._local.ticket = ticket
        while delay > 0:
            self._wait(delay)
            delay = self.recheck(ticket)

    def _book(self, ticket: int, worker: int | None) -> float:
        worker = threading.get_ident() if worker is None else worker
        now = self._clock()
        start = max(now, self._next_start)
        if worker != self._held_by:
            start = max(start, self._held_until)
        elif start >= self._held_until:
            self._held_by = None
        start, spacing = self._schedule(ticket, start)
        self._next_start = start + spacing
        if start > now:
            # A start booked ahead is checked again when it comes: a 429 or a spent
            # window in between must hold it too.
            self._booked_news[ticket] = self._news
        else:
            self._booked_news.pop(ticket, None)
        return start - now

    def observe(
        self,
        status: int,
        headers: Mapping[str, str],
        retry_after: float | None = None,
        *,
        ticket: int | None = None,
        worker: int | None = None,
    ) -> None:
        """Learn the window from an answer's headers; hold everyone after a 429."""
        worker = threading.get_ident() if worker is None else worker
        limit = _number(headers.get("X-RateLimit-Limit"))
        remaining = _number(headers.get("X-RateLimit-Remaining"))
        reset_wall = _number(headers.get("X-RateLimit-Reset"))
        with self._lock:
            now = self._clock()
            if ticket is None:
                ticket = getattr(self._local, "ticket", self._tickets - 1)
            reset_at = None if reset_wall is None else now + reset_wall - self._wall_clock()
            if reset_wall is not None:
                self._learn_window_length(reset_wall)
                if self._first_window_guess is None and reset_at is not None:
                    # A window is at least as long as the time it had left when first
                    # seen: in whole seconds, the shortest length it can have.
                    self._first_window_guess = float(max(1, math.ceil(reset_at - now)))
            if remaining is not None and (self._info is None or ticket >= self._info.ticket):
                self._news += remaining <= 0
                self._info = _WindowInfo(
                    ticket, now, int(limit) if limit and limit > 0 else None,
                    int(remaining), reset_at,
                )
            if status < 400 and worker == self._held_by:
                # The retry of the request that was told to wait went through: the
                # window is open again for everyone.
                self._held_until = min(self._held_until, now)
                self._next_start = min(self._next_start, now)
                self._held_by = None
            if status == 429:
                if retry_after is not None:
                    until = now + retry_after
                elif reset_at is not None:
                    until = max(reset_at, now)
                else:
                    until = now + UNNAMED_HOLD
                self._share = max(MIN_SHARE, self._share * SHARE_AFTER_429)
                if until > self._held_until:
                    self._news += 1
                    self._held_until = until
                    self._held_by = worker

    def _learn_window_length(self, reset_wall: float) -> None:
        last = self._last_reset_wall
        if last is not None and reset_wall > last:
            step = reset_wall - last
            # After an idle gap Reset jumps several windows: keep the shortest step seen.
            self.window_seconds = step if self.window_seconds is None else min(
                self.window_seconds, step)
        if last is None or reset_wall > last:
            self._last_reset_wall = reset_wall

    def _schedule(self, ticket: int, at: float) -> tuple[float, float]:
        """When request `ticket`, free to go at `at`, starts, and the gap after it."""
        info = self._info
        if info is None:
            return at, 0.0
        since = ticket - info.ticket - 1  # started after the answer we know of
        budget = info.remaining - since
        if info.reset_at is None:
            if budget > 0:
                return at, 0.0
            return max(at, info.observed_at + UNNAMED_HOLD), 0.0
        length = self.window_seconds or self._first_window_guess
        if info.remaining <= 0 and at < info.reset_at:
            at = info.reset_at  # GTMCLI says this window is spent
        if self._demand is not None and self._demand <= self._left_in_window(info, since, at):
            return at, 0.0  # all that is left fits in this window: no need to wait
        if not info.limit or not length:
            return at, self._spread(info.reset_at - at, budget) if at < info.reset_at else 0.0
        # Even spacing over the window's length (see the module's rules for why).
        spacing = length / (info.limit * self._share)
        if self.window_seconds is None and at < info.reset_at and budget > 0:
            # Until two Resets show the length, the first window's remaining requests
            # are also spread over the time it has left.
            spacing = max(spacing, (info.reset_at - at) / budget)
        return at, spacing

    @staticmethod
    def _left_in_window(info: _WindowInfo, since: int, at: float) -> int:
        """Requests the window holding `at` still allows, counting all started since."""
        if info.reset_at is not None and at < info.reset_at:
            return info.remaining - since
        if info.limit is None:
            return 0
        # The requests beyond the told window's budget count against the next one.
        return info.limit - max(0, since - max(info.remaining, 0))

    @staticmethod
    def _spread(time_left: float, budget: int) -> float:
        return max(time_left, 0.0) / max(budget, 1)
