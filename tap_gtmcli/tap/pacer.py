"""The run's one pacer: every request asks it before going out and tells it what came back.

    ticket = pacer.acquire(stop)      # blocks until the request may start
    pacer.observe(ticket, response)   # its answer, or None when none came

GTMCLI's docs do not say how its limit counts (windows on the calendar, a window opened
by the first request after the last one closed, a sliding log, a token bucket) nor how
`X-RateLimit-Reset` is rounded. So the pacer leans on no scheme's arithmetic; a request
may start when any of these says so, and requests start in the order they asked (a
retry first: the pages after it wait for its answer to be handed over):

- The server's word: the freshest answer's `Remaining`, less every request in flight
  (those that went before it may still arrive after it). In every scheme room only
  comes back with time, so this never asks for more than there is.
- Our own log: fewer than `Limit` of our starts in the trailing window (its length plus
  slack). A pace kept on the way out is kept on arrival, and every scheme accepts a
  pace with at most `Limit` requests in any window. The window's length is the most
  time an answer said its window had left (`Reset` minus now), in whole seconds rounded
  down: `Reset` is only approximate, and may be rounded either way.
- A probe: when both say no, one request may go once the long-run gap (window / Limit)
  has passed since the last start, so that a limiter that gives room back little by
  little (a token bucket) can say so. Probes in flight grow by one with each probe let
  through; the first probe answered 429 ends probing for the run and holds nobody.
- Any other 429 holds every other request for its `Retry-After` (else until its
  `Reset`, else UNNAMED_HOLD); one our log let through widens its slack, any other
  has the log use SHARE_AFTER_429 less of the limit from then on.

How many requests may be in flight (`window`): with a limit, the cap (the rules above
pace them); with none told (job endpoints may send no headers), INITIAL_WINDOW, one more
per answer up to the cap (doubling each round trip), and half as many after a 429, a
5xx or no answer (once per round trip), then one more per round trip.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from tap_gtmcli.api.retry import parse_retry_after, raise_if_stopped

#: In flight at most without a limit: polite to a shared API, and 100 pages a second at 300 ms.
POLITE_CAP = 32
#: In flight at most with a limit: 50 requests a second at 800 ms need 40 in flight.
LIMITED_CAP = 64
#: In flight before anything is known: what the tap kept in flight before it paced.
INITIAL_WINDOW = 8
#: Seconds added to the window our log counts in (and again after each 429 it let
#: through): requests do not all take the same time to reach the server.
SLACK = 0.04
#: Hold after a 429 that names no wait (no `Retry-After`, no `Reset`): long enough to
#: stop a storm, short enough to find out.
UNNAMED_HOLD = 1.0
#: After each 429 the server's word or a hold let through, the share of the limit our
#: log uses shrinks by this factor, down to MIN_SHARE: something else (another client on
#: the key) takes the rest.
SHARE_AFTER_429 = 0.9
MIN_SHARE = 0.5
#: The longest a waiting request sleeps before it looks again (and at its stop).
NAP = 0.25


@dataclass(frozen=True)
class _Word:
    """What the freshest answer said: `remaining` after request `ticket` was counted,
    and, when others used part of the window too, until when that holds."""

    ticket: int
    remaining: int
    reset: float  # as told (whole Unix seconds); -inf when not told
    until: float = -math.inf


def _number(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


class Pacer:
    """Paces a run's requests under the API's rate limit, whatever scheme counts it."""

    def __init__(
        self,
        *,
        max_in_flight: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        nap: Callable[[float], object] | None = None,
    ) -> None:
        self._clock, self._wall_clock = clock, wall_clock
        self._changed = threading.Condition()  # reentrant: a test's nap may observe
        self._nap = nap or self._changed.wait
        self._cap = max_in_flight
        self._queue: list[object] = []  # requests waiting, in the order they asked
        self._tickets = 0
        #: In flight: ticket -> when it started, and the rule that let it go.
        self._started: dict[int, tuple[float, str]] = {}
        self._log: dict[int, float] = {}  # our starts not refused, oldest first
        self._word: _Word | None = None
        self.limit: int | None = None
        #: Seconds per window, as learned from the answers.
        self.window_seconds = 1.0
        self._share = 1.0
        self._held_until = self._held_at = -math.inf
        self._probes = 1  # probes that may be in flight; 0 once one was refused
        self._aimd, self._slow_start = float(INITIAL_WINDOW), True
        self._last_cut = -math.inf
        #: Seconds our log adds to the window: SLACK, and more after 429s it let through.
        self.slack, self._slack_grown_at = SLACK, -math.inf
        self.throttled = 0

    @property
    def max_window(self) -> int:
        """The most requests that may ever be in flight."""
        return max(1, self._cap) if self._cap else LIMITED_CAP

    @property
    def window(self) -> int:
        """How many requests may be in flight now."""
        with self._changed:
            if self.limit is not None:
                return self.max_window
            return max(1, min(int(self._aimd), self._cap or POLITE_CAP))

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn to start."""
        with self._changed:
            return len(self._queue)

    def acquire(
        self, stop: threading.Event | None = None, *, retry: bool = False,
        waited_out: bool = False,
    ) -> int:
        """Block until a request may start; its ticket, for `observe`. A set `stop` ends
        the wait with `GTMCLICancelledError`. A `retry` goes before every request not yet
        tried: the pages read after it are handed over only once it is answered.
        `waited_out`: a retry that waited out its own 429's wait, which the hold after it
        is not for."""
        me = object()
        with self._changed:
            if retry:
                self._queue.insert(0, me)
            else:
                self._queue.append(me)
            try:
                while True:
                    raise_if_stopped(stop, "a request held by the pacer")
                    wait = NAP  # until those ahead have gone
                    if self._queue[0] is me:
                        now = self._clock()
                        wait, rule = self._wait(now, waited_out)
                        if wait <= 0:
                            return self._start(now, rule)
                    self._nap(min(wait, NAP))
            finally:
                self._queue.remove(me)
                self._changed.notify_all()

    def observe(self, ticket: int, response: requests.Response | None) -> None:
        """Learn from the answer to request `ticket` (None: no answer came)."""
        with self._changed:
            now = self._clock()
            started, rule = self._started.pop(ticket, (now, ""))
            status = response.status_code if response is not None else None
            if status is None or status == 429 or status >= 500:
                if started >= self._last_cut:  # once per round trip
                    self._aimd, self._slow_start = max(1.0, self._aimd / 2), False
                    self._last_cut = now
            else:
                self._aimd = min(float(POLITE_CAP), self._aimd + (
                    1.0 if self._slow_start else 1.0 / self._aimd))
            if response is not None:
                self._learn(ticket, response, now, started, rule)
            self._changed.notify_all()

    # --- inside the lock --------------------------------------------------------------

    def _wait(self, now: float, waited_out: bool = False) -> tuple[float, str]:
        """Seconds before the next request may start (0: now), and by which rule."""
        if now < self._held_until and not waited_out:
            return self._held_until - now, ""
        word = self._word
        if self.limit is None or word is None:
            return 0.0, "window"  # nothing told of a limit: the window alone paces
        if word.remaining - len(self._started) > 0:
            return 0.0, "word"
        if now < word.until:
            return word.until - now, ""  # our log does not know what others used
        length = self._log_seconds()
        quota = max(1, math.floor(self.limit * self._share))
        for ticket, at in list(self._log.items()):  # kept two windows: see `ours` below
            if at > now - 2 * length:
                break
            del self._log[ticket]
        starts = [at for at in self._log.values() if at > now - length]
        if len(starts) < quota:
            return 0.0, "log"
        wait = starts[-quota] + length - now
        if sum(rule == "probe" for _, rule in self._started.values()) < self._probes:
            probe_in = starts[-1] + length / quota - now
            if probe_in <= 0:
                return 0.0, "probe"
            wait = min(wait, probe_in)
        return wait, ""

    def _log_seconds(self) -> float:
        """The trailing window our log counts starts in."""
        # `Reset` is in whole seconds, so the most time left seen, rounded down, can be
        # a second short of the window (one-second windows aside: none is shorter).
        rounding = 1.0 if self.window_seconds > 1 else 0.0
        return self.window_seconds + rounding + self.slack

    def _start(self, now: float, rule: str) -> int:
        ticket = self._tickets
        self._tickets += 1
        self._started[ticket] = (now, rule)
        self._log[ticket] = now
        return ticket

    def _learn(self, ticket: int, response: requests.Response, now: float, started: float,
               rule: str) -> None:
        headers = response.headers
        limit = _number(headers.get("X-RateLimit-Limit"))
        remaining = _number(headers.get("X-RateLimit-Remaining"))
        reset = _number(headers.get("X-RateLimit-Reset"))
        time_left = None if reset is None else reset - self._wall_clock()
        if time_left is not None and time_left >= 1:
            self.window_seconds = max(self.window_seconds, float(math.floor(time_left)))
        word, told = self._word, -math.inf if reset is None else reset
        # The freshest word: of a later window (Reset), else the least Remaining of the
        # same window (answers come back in another order than they were counted);
        # with no Reset, the answer to the latest request.
        fresher = word is None or told > word.reset or (told == word.reset and (
            (remaining is not None and remaining < word.remaining)
            or (reset is None and ticket > word.ticket)))
        if limit is not None and limit >= 1 and remaining is not None and fresher:
            self.limit = int(limit)
            # Our log stands in for the server's count only while that count is all
            # ours: else the word holds until its Reset. (Ours includes the starts after
            # this one: some may have arrived first.)
            since = started - self._log_seconds()
            ours = sum(1 for at in self._log.values() if at > since)
            others = limit - remaining - ours > 0 and time_left is not None
            self._word = _Word(ticket, int(remaining), told,
                               now + time_left if others and time_left else -math.inf)
        if response.status_code != 429:
            if started > self._held_at:  # a retry that waited out the hold went through
                self._held_until = min(self._held_until, now)
            if rule == "probe" and self._probes:
                self._probes += 1
            return
        self.throttled += 1
        self._log.pop(ticket, None)  # refused: it used none of the window
        if rule == "probe":
            self._probes = 0  # the limiter gives no room early: no more probes
            return
        retry_after = parse_retry_after(headers.get("Retry-After"), self._wall_clock())
        if retry_after is None:
            retry_after = max(0.0, time_left) if time_left is not None else UNNAMED_HOLD
        self._held_until, self._held_at = max(self._held_until, now + retry_after), now
        if rule != "log":
            self._share = max(MIN_SHARE, self._share * SHARE_AFTER_429)
        elif started > self._slack_grown_at:  # once for the requests that went together
            self.slack, self._slack_grown_at = self.slack + SLACK, now
