"""One gate that every request of a run passes, so that all workers together stay within
the plan's rate limit, whatever the length of its window.

GTMCLI tells its limit in `X-RateLimit-Limit` (requests in the current window),
`X-RateLimit-Remaining` and `X-RateLimit-Reset` (Unix seconds when the window ends); its
own example is a per-minute window, and job endpoints may send none of these. The gate
never assumes a window length:

- No limit headers at all: the gate does not pace (the in-flight window does the rest).
- GTMCLI counts a request when it arrives, which on a slow link is often in a later
  window than the one the client saw when it sent it. So the gate keeps a ledger of its
  own starts and places each in the window it will arrive in: it learns the delay from
  start to count from the answers (a request is counted before it is answered, and
  inside the window its answer's `Reset` closes), as a range, and a start whose range
  straddles a window boundary counts against both windows.
- A window is full when our starts placed in it, or what GTMCLI last told of it
  (`Limit - Remaining`, plus our starts after the one it answered), reach its quota: the
  whole limit (the slack for jitter is in the delay's range); a little under it while a
  delay that may last a window or more is still being learned (the slack takes the
  starts that find out in which window they arrive); less after each 429.
  A request that would arrive in a full window starts so that it arrives in the next
  one; so a window that is spent (`Remaining: 0`) holds every worker until its `Reset`.
- The ledger keeps the moment each request actually started; how late starts go after
  their booked moment widens the delay's range.
- Until an answer shows how soon a request can be counted, a start must go no earlier
  than its window's opening, and the run's last window is reached a whole delay late.
  So, when the run's last window will have a place spare, a window's last start is
  aimed across its end (it counts against both): whichever side its answer shows, the
  range is halved, and the starts after go as early as the range allows.
- A start booked ahead looks again for an earlier moment whenever answers came in since
  it last looked: what they taught can show that its window has room sooner. While the
  delay is still a wide range, starts that may arrive in either of two windows count in
  both; the answers that place them free the window they did not use, and the starts
  booked behind them move up into it.
- Within a window, the requests it still allows are spread over the time it has left
  (the first window seen included, however much of it is left); when all the run still
  has to request fits in what the window allows, nothing is spread: it goes at once.
- The window's length comes from the steps between `Reset`s: their greatest common
  divisor when they lie on a grid (no answer told of more time left than that), else
  the shortest step. Until two `Reset`s are seen, from the first window's time left in
  whole seconds (the shortest length it can have).
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

from tap_gtmcli.tap.count_delay import CountDelay

#: How long everyone waits after a 429 or `Remaining: 0` that names no moment to resume
#: (no `Retry-After`, no `Reset`): long enough to stop a storm, short enough to find out.
UNNAMED_HOLD = 1.0
#: A start booked further ahead than this looks again this often for an earlier moment,
#: when answers came in meanwhile (what they taught can show its window has room sooner).
RECHECK = 0.05
#: Share of the limit used while the delay from start to count is learned, when it may be
#: a whole window or more (a request can then arrive in either of two windows, whenever
#: it starts): the rest of each window takes the starts that find out which.
LEARNING_SHARE = 0.96
#: The delay is known once its range is this narrow, as a share of the window's length.
KNOWN_DELAY = 0.1
#: ... and needs learning only when it may be this long, as a share of the window.
LONG_DELAY = 1.0
#: Each 429 all the same takes this much off the share, down to MIN_SHARE.
SHARE_AFTER_429 = 0.9
MIN_SHARE = 0.75
#: Starts kept before any answer told of a limit (with none, nothing needs the ledger).
FIRST_STARTS = 64
#: Starts the ledger keeps at most (it forgets those whose windows are past anyway).
LEDGER_SIZE = 20_000


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class _Told:
    """What an answer said about its window, and which request it answered."""

    ticket: int
    observed_at: float
    limit: int | None
    remaining: int
    #: On the gate's own clock (the header is wall-clock Unix seconds).
    reset_at: float | None
    #: When the request it answered started (None: not in the ledger).
    started_at: float | None = None


@dataclass
class _Start:
    """A request start in the ledger."""

    at: float
    answered: bool = False
    #: The Reset (on the gate's clock) of the window that counted it, once answered.
    counted_by: float | None = None


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
        #: The newest answer's news, and the newest per window (by its Reset).
        self._info: _Told | None = None
        self._told: dict[float, _Told] = {}
        #: Every start booked while a limit is known, in booking order: ticket -> its
        #: start, and once answered the Reset of the window that counted it.
        self._starts: dict[int, _Start] = {}
        self._delay = CountDelay()
        self._last_reset_wall: float | None = None
        self._demand: int | None = None
        #: Counts 429s and spent windows, so that booked starts know to look again.
        self._news = 0
        self._booked_news: dict[int, int] = {}
        #: Counts answers, so that a start booked ahead looks again only after new ones.
        self._answers = 0
        self._looked: dict[int, int] = {}
        #: Seconds per window once two `Reset`s have shown it.
        self.window_seconds: float | None = None
        self._first_window_guess: float | None = None
        #: The greatest common divisor and the shortest of the steps between Resets
        #: (ms), and the most time left in a window that an answer told.
        self._steps: int | None = None
        self._shortest_step: int | None = None
        self._longest_left = 0.0
        #: Share of the limit used: all of it, less after each 429.
        self._share = 1.0
        #: The start last aimed across a window's end to learn the delay (_wants_probe).
        self._probe: int | None = None

    def expect(self, requests_left: int | None) -> None:
        """Tell the gate how many requests the run still has to make (None: unknown)."""
        with self._lock:
            self._demand = requests_left

    def delay_bounds(self) -> tuple[float, float]:
        """(soonest, latest) seconds from a request's start to GTMCLI counting it, as
        learned so far; (0, 0) before any answer told of a window."""
        with self._lock:
            return self._delay.bounds()

    def allowed_rate(self) -> float | None:
        """Requests per second the plan allows now: None when no limit was told (nothing
        to pace by), `math.inf` when all the run still has to request fits in what the
        window being filled allows (it may all go at once)."""
        with self._lock:
            info = self._info
            length = self._length()
            if info is None or info.limit is None or info.reset_at is None or not length:
                return None
            counted = self._clock() + self._delay.bounds()[1]  # a request sent now
            window = self._window_of(counted)
            quota = self._quota(info)
            left = quota - self._used(window, info)
            if self._demand is not None and self._demand <= left:
                return math.inf
            # The long-run pace, or faster while the window being filled has room left.
            time_left = self._window_start(window + 1) - counted
            return max(quota / length, max(left, 0) / max(time_left, 1e-3))

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
            booked = self._starts.pop(ticket, None)  # booked again below
            return self._book(ticket, worker, rebooking=booked.at if booked else 0.0)

    def sooner(self, ticket: int, left: float, worker: int | None = None) -> float:
        """Seconds left before a start booked ahead (at most `left`): what the answers
        that came in since it last looked taught can show its window has room sooner."""
        with self._lock:
            booked = self._starts.get(ticket)
            news = self._news
            if (booked is None or self._booked_news.get(ticket) != news
                    or self._looked.get(ticket) == self._answers):
                return left
            self._looked[ticket] = self._answers
            next_start = self._next_start
            del self._starts[ticket]
            again = self._book(ticket, worker, rebooking=self._clock())
            if again < left:
                return again
            # No sooner: the booking stands as it was.
            self._starts[ticket], self._next_start = booked, next_start
            self._booked_news[ticket] = news
            return left

    def looks_again(self, delay: float) -> bool:
        """Whether a start `delay` seconds ahead looks again after RECHECK for a sooner
        moment: when it is further ahead than that, placed by windows (not held after a
        429), and answers are awaited that could show its window has room sooner."""
        if delay <= RECHECK:
            return False
        with self._lock:
            now = self._clock()
            info = self._info
            if (info is None or info.limit is None or info.reset_at is None
                    or self._held_until >= now + delay):
                return False
            return any(not start.answered and start.at <= now
                       for start in self._starts.values())

    def wait_turn(self) -> None:
        """Block until this thread may start a request."""
        ticket, delay = self.reserve()
        self._local.ticket = ticket
        try:
            while delay > 0:
                if self.looks_again(delay):
                    self._wait(RECHECK)
                    delay = self.sooner(ticket, delay - RECHECK)
                    continue
                self._wait(delay)
                delay = self.recheck(ticket)
        finally:
            with self._lock:
                self._looked.pop(ticket, None)
        self.started(ticket)

    def started(self, ticket: int) -> None:
        """Note that the request booked as `ticket` starts now: the ledger keeps the
        moment it actually starts, and how late that was."""
        with self._lock:
            start = self._starts.get(ticket)
            if start is not None and not start.answered:
                now = self._clock()
                self._delay.note_lateness(max(0.0, now - start.at))
                start.at = now

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
            self._answers += 1
            if ticket is None:
                ticket = getattr(self._local, "ticket", self._tickets - 1)
            reset_at = None if reset_wall is None else now + reset_wall - self._wall_clock()
            started = self._starts.get(ticket)
            if reset_wall is not None and reset_at is not None:
                self._learn_window_length(reset_wall, reset_at - now)
                if self._first_window_guess is None:
                    # A window is at least as long as the time it had left when first
                    # seen: in whole seconds, the shortest length it can have.
                    self._first_window_guess = float(max(1, math.ceil(reset_at - now)))
                if started is not None and status != 429:
                    self._delay.learn(started=started.at, answered=now, reset_at=reset_at,
                                      window_seconds=self.window_seconds)
                    started.counted_by = reset_at
            if status == 429:
                self._starts.pop(ticket, None)  # refused: it used none of the window
            elif ticket in self._starts:
                self._starts[ticket].answered = True
            if remaining is not None:
                told = _Told(ticket, now, int(limit) if limit and limit > 0 else None,
                             int(remaining), reset_at,
                             started.at if started is not None else None)
                if self._info is None or ticket >= self._info.ticket:
                    self._info = told
                    if remaining <= 0 and not self._foreseen(told):
                        self._news += 1  # starts booked into that window must move
                if reset_wall is not None:
                    known = self._told.get(reset_wall)
                    if known is None or ticket >= known.ticket:
                        self._told[reset_wall] = told
                    self._forget(now)
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

    # --- booking ------------------------------------------------------------------------

    def _book(self, ticket: int, worker: int | None, rebooking: float | None = None) -> float:
        """Book a start; `rebooking`: the start it had, kept if the news allow it."""
        worker = threading.get_ident() if worker is None else worker
        now = self._clock()
        start = max(now, self._next_start if rebooking is None else rebooking)
        if worker != self._held_by:
            start = max(start, self._held_until)
        elif start >= self._held_until:
            self._held_by = None
        start, spacing = self._schedule(ticket, start)
        if rebooking is None:
            self._next_start = start + spacing
        else:  # the starts after it are booked already
            self._next_start = max(self._next_start, start)
        if start > now:
            # A start booked ahead is checked again when it comes: a 429 or a spent
            # window in between must hold it too.
            self._booked_news[ticket] = self._news
        else:
            self._booked_news.pop(ticket, None)
        return start - now

    def _schedule(self, ticket: int, at: float) -> tuple[float, float]:
        """When request `ticket`, free to go at `at`, starts, and the gap after it."""
        info = self._info
        if info is None:
            if len(self._starts) < FIRST_STARTS:
                # Until an answer tells of a limit: their answers will tell how long
                # GTMCLI takes to count a request, should they tell of one.
                self._ledger(ticket, at)
            return at, 0.0
        budget = info.remaining - (ticket - info.ticket - 1)  # all started since count
        if info.reset_at is None:
            # A limit with no Reset: no window to place starts in; go while it lasts.
            if budget > 0:
                return at, 0.0
            return max(at, info.observed_at + UNNAMED_HOLD), 0.0
        if info.limit is None:
            # No limit told: only the told window is known; after it nothing is paced.
            if at >= info.reset_at:
                return at, 0.0
            if budget <= 0:
                return info.reset_at, 0.0
            return at, (info.reset_at - at) / budget
        soonest, latest = self._delay.bounds()
        quota = self._quota(info)
        for _ in range(1000):  # each turn moves on by at least part of a window
            first = self._window_of(at + soonest)
            last = self._window_of(at + latest)
            if first == last:
                used = self._used(first, info)
                if used < quota:
                    if used == quota - 1 and self._wants_probe(first, info, quota):
                        # The window's last start straddles its end instead: it counts
                        # in this window or the next, both with room, and its answer
                        # halves the delay's range (see _wants_probe).
                        at = max(at, self._window_start(first + 1) - (soonest + latest) / 2)
                        self._probe = ticket
                    break
                # Full: aim at the boundary after it, the start's range of arrival
                # centred on it, so that the answer tells which side it fell.
                at = max(at, self._window_start(first + 1) - (soonest + latest) / 2)
                continue
            # It may arrive on either side of a boundary: the earlier window's last few
            # requests above the quota (its slack) take it; else it waits to be past.
            if (self._used(first, info) < (info.limit or quota)
                    and all(self._used(window, info) < quota
                            for window in range(first + 1, last + 1))):
                break
            at = max(at, self._window_start(first + 1) - soonest)
        self._ledger(ticket, at)
        window = self._window_of(at + latest)
        left = quota - self._used(window, info) + 1  # this one included
        # What the run still has to start: its demand counts every request it has sent
        # and not seen answered, and those started already are in the ledger.
        if self._demand is not None and self._demand - len(self._awaited()) + 1 <= left:
            return at, 0.0  # all that is left fits in this window: no need to spread
        time_left = self._window_start(window + 1) - (at + latest)
        return at, max(time_left, 0.0) / max(left, 1)

    def _awaited(self) -> list[_Start]:
        """The starts in the ledger not answered yet (booked ahead, or on the way)."""
        return [start for start in self._starts.values() if not start.answered]

    def _ledger(self, ticket: int, at: float) -> None:
        self._starts[ticket] = _Start(at)
        if len(self._starts) > LEDGER_SIZE:
            self._starts.pop(next(iter(self._starts)))

    # --- windows ------------------------------------------------------------------------

    def _length(self) -> float | None:
        return self.window_seconds or self._first_window_guess

    def _anchor(self) -> float:
        """A window boundary on the gate's clock: the newest answer's Reset."""
        assert self._info is not None
        assert self._info.reset_at is not None
        return self._info.reset_at

    def _window_of(self, moment: float) -> int:
        """The window (numbered from the anchor's) that a request counted at `moment` is in."""
        length = self._length()
        if not length:
            return 0
        return math.floor((moment - self._anchor()) / length)

    def _window_closed_by(self, reset_at: float) -> int:
        """The window whose end is `reset_at` (a Reset told, on the gate's clock)."""
        length = self._length()
        if not length:
            return -1
        return round((reset_at - self._anchor()) / length) - 1

    def _window_start(self, window: int) -> float:
        length = self._length() or 0.0
        return self._anchor() + window * length

    def _quota(self, info: _Told) -> int:
        share = min(self._share, LEARNING_SHARE) if self._learning() else self._share
        return max(1, math.floor((info.limit or 1) * share))

    def _delay_is_rough(self) -> bool:
        """Whether the delay from start to count is known only as a range wider than
        KNOWN_DELAY of the window."""
        soonest, latest = self._delay.bounds()
        length = self._length()
        return bool(length) and latest - soonest > KNOWN_DELAY * (length or 0.0)

    def _learning(self) -> bool:
        """Whether a request may take a window or more to be counted, and the delay is
        still known only roughly. (A shorter one leaves room to place each start whole
        inside a window, however rough its range.)"""
        latest = self._delay.bounds()[1]
        length = self._length()
        return (bool(length) and latest > 0 and self._delay_is_rough()
                and latest >= LONG_DELAY * (length or 0.0))

    def _wants_probe(self, window: int, info: _Told, quota: int) -> bool:
        """Whether the start taking `window`'s last place should be aimed across its end.

        A request whose delay is known only as a wide range must start whole inside a
        window: at the earliest when the range's soonest end has it counted after the
        opening, which, while nothing has shown that soonest end above 0, is the opening
        itself. So the run's last window is reached a delay later than it could be. A
        start aimed across a boundary, counted in either window, halves the range
        whichever side its answer shows; once it is known, starts go as early as it
        allows (those booked already move up).

        One at a time, while the range is wide for the window (not while a delay of a
        window or more is learned: the learning slack does that), and only when the
        run's demand is known: counted in the next window, it leaves a place here
        unused, so the run's last window must have one spare; and the run must need more
        than the next window, or what it teaches comes too late to be of use."""
        if not self._delay_is_rough() or self._learning():
            return False
        # (The start being booked is not in the ledger: a start booked again leaves it.)
        probe = self._starts.get(self._probe) if self._probe is not None else None
        if probe is not None and not probe.answered:
            return False  # one at a time: the next halves what this one tells
        if self._demand is None:
            return False  # what a lost place would cost is not known
        # The requests after this one, placed in the windows after this one: the probe
        # is free when the last window they need keeps a place spare (a probe counted in
        # the next window leaves one here), and worth it when they need more than the
        # next window (what it teaches comes in before the one after opens).
        awaited = self._awaited()
        after = self._demand - len(awaited) - 1  # not booked yet
        nearest = quota - self._used(window + 1, info)
        later = self._window_start(window + 2) - self._delay.bounds()[0]
        beyond = after + sum(1 for start in awaited if start.at >= later) - nearest
        return nearest >= 1 and after >= 0 and beyond > 0 and beyond % quota != 0

    def _foreseen(self, told: _Told) -> bool:
        """Whether our own starts placed in a window told spent fill it already."""
        if told.reset_at is None or told.limit is None or not self._length():
            return False
        return len(self._ours(self._window_closed_by(told.reset_at))) >= told.limit

    def _ours(self, window: int) -> list[int]:
        """The tickets of our starts placed in `window` (a start may be in two)."""
        begins, ends = self._window_start(window), self._window_start(window + 1)
        soonest, latest = self._delay.bounds()
        return [ticket for ticket, start in self._starts.items()
                if (self._window_closed_by(start.counted_by) == window
                    if start.counted_by is not None
                    else start.at + soonest < ends and start.at + latest >= begins)]

    def _used(self, window: int, info: _Told) -> int:
        """How much of `window` is taken: by our starts placed in it, or as GTMCLI told."""
        ours = self._ours(window)
        used = len(ours)
        for told in self._told.values():
            if told.reset_at is None or self._window_closed_by(told.reset_at) != window:
                continue
            limit = told.limit if told.limit is not None else info.limit
            if limit is not None:
                after = sum(1 for ticket in ours if self._after(ticket, told))
                used = max(used, limit - told.remaining + after)
        return used

    def _after(self, ticket: int, told: _Told) -> bool:
        """Whether our start `ticket` was counted after the request `told` answered:
        requests are counted in the order they start (one at the same moment is taken to
        be after), and a start booked ahead can have moved up past later tickets, so the
        order is the starts', not the tickets'."""
        if told.started_at is None:
            return ticket > told.ticket
        return ticket != told.ticket and self._starts[ticket].at >= told.started_at

    def _forget(self, now: float) -> None:
        """Drop starts and news of windows long past."""
        length = self._length() or 1.0
        horizon = now - 2 * length - self._delay.bounds()[1]
        for reset_wall in [key for key, told in self._told.items()
                           if told.reset_at is not None and told.reset_at < horizon]:
            del self._told[reset_wall]
        while self._starts:
            ticket, start = next(iter(self._starts.items()))
            if start.at >= horizon:
                break
            del self._starts[ticket]

    def _learn_window_length(self, reset_wall: float, time_left: float) -> None:
        self._longest_left = max(self._longest_left, time_left)
        last = self._last_reset_wall
        if last is not None and reset_wall > last:
            step = round((reset_wall - last) * 1000)  # in milliseconds
            self._shortest_step = step if self._shortest_step is None else min(
                self._shortest_step, step)
            self._steps = step if self._steps is None else math.gcd(self._steps, step)
        if last is None or reset_wall > last:
            self._last_reset_wall = reset_wall
        if self._steps is not None and self._shortest_step is not None:
            # After an idle gap Reset jumps several windows: the shortest step seen is a
            # whole number of windows. When windows follow one another on a fixed grid,
            # every step is: their greatest common divisor is the window, unless a
            # window was seen with more time left than that (then they do not).
            common = self._steps / 1000
            self.window_seconds = (common if common >= self._longest_left
                                   else self._shortest_step / 1000)
