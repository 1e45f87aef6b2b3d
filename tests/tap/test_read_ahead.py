"""Reading results as fast as the API allows, with injected clocks: the in-flight window
(rate x latency with a limit, AIMD without), the window-agnostic rate gate against a
simulated fixed-window server, and result pages read ahead across jobs (order, failures,
byte cap). No assertion depends on the machine's timing."""

from __future__ import annotations

import heapq
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

import pytest

from tap_gtmcli.api.errors import GTMCLICancelledError
from tap_gtmcli.api.retry import parse_retry_after
from tap_gtmcli.tap.count_delay import JITTER
from tap_gtmcli.tap.in_flight_window import (
    INITIAL_WINDOW,
    LIMITED_CAP,
    POLITE_CAP,
    InFlightWindow,
    Outcome,
)
from tap_gtmcli.tap.page_pipeline import PagePipeline
from tap_gtmcli.tap.rate_gate import RECHECK, RateGate
from tap_gtmcli.tap.result_pages import ResultPage
from tap_gtmcli.tap.tap import TapGTMCLI
from tests.helpers.tap_runs import run_tap

RESULTS = "GET /v1/jobs/{id}/results"
PAGE_BYTES = 1000


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the in-flight window -----------------------------------------------------------


def feed(window: InFlightWindow, clock: FakeClock, latency: Callable[[int], float],
         rounds: int, outcome: Callable[[int], Outcome] = lambda _: Outcome.ANSWERED,
         ) -> list[int]:
    """Run `rounds` rounds of a server whose latency depends on the requests in flight."""
    sizes = []
    for round_number in range(rounds):
        size = window.size
        sizes.append(size)
        window.bound()  # there is always more to fetch than the window holds
        for _ in range(size):
            clock.now += latency(size) / size
            window.record(latency(size), outcome(round_number))
    return sizes


def test_with_a_limit_the_window_is_rate_times_latency_and_follows_latency():
    clock = FakeClock()
    rate: list[float | None] = [50.0]
    window = InFlightWindow(allowed_rate=lambda: rate[0], clock=clock)
    assert window.size == INITIAL_WINDOW  # no latency measured yet
    for latency, expected in [(0.3, 20), (0.8, 51), (0.1, 8)]:
        for _ in range(80):
            window.record(latency, Outcome.ANSWERED)
        # Little's law, 25% headroom and one more: ceil(50 x latency x 1.25) + 1.
        assert window.size == expected
    rate[0] = 200.0
    for _ in range(80):
        window.record(0.8, Outcome.ANSWERED)
    assert window.size == LIMITED_CAP
    assert InFlightWindow(allowed_rate=lambda: 200.0, upper=10, clock=clock).upper == 10


def test_without_a_limit_the_window_grows_while_throughput_grows():
    clock = FakeClock()
    window = InFlightWindow(allowed_rate=lambda: None, clock=clock)
    # A server that answers in 100 ms up to 12 requests at once and queues the rest.
    sizes = feed(window, clock, lambda size: 0.1 * max(1.0, size / 12), rounds=40)
    assert sizes[:2] == [8, 16]  # slow start: throughput doubled with the window
    assert max(sizes) <= POLITE_CAP
    # Once the server queues, latency rises and the window settles above its capacity
    # (throughput is at the top) without running to the cap.
    assert 12 <= sizes[-1] < POLITE_CAP


def test_without_a_limit_and_a_fast_server_the_window_reaches_the_politeness_cap():
    clock = FakeClock()
    window = InFlightWindow(allowed_rate=lambda: None, clock=clock)
    sizes = feed(window, clock, lambda size: 0.3, rounds=12)
    assert sizes[:3] == [8, 16, 32]
    assert sizes[-1] == POLITE_CAP
    capped = InFlightWindow(allowed_rate=lambda: None, upper=6, clock=clock)
    assert max(feed(capped, clock, lambda size: 0.3, rounds=12)) == 6


def test_errors_halve_the_window_once_per_round_then_it_grows_again():
    clock = FakeClock()
    window = InFlightWindow(allowed_rate=lambda: None, clock=clock)
    sizes = feed(window, clock, lambda size: 0.3, rounds=3)
    assert sizes == [8, 16, 32]
    # A round where every answer is a 429 (or 5xx, or a timeout): halved once, not 32x.
    throttled = feed(window, clock, lambda size: 0.3, rounds=1,
                     outcome=lambda _: Outcome.THROTTLED)
    assert throttled == [32]
    assert window.size == 16
    feed(window, clock, lambda size: 0.3, rounds=1, outcome=lambda _: Outcome.FAILED)
    assert window.size == 8
    # No slow start after a loss: one more per round while latency stays at its floor.
    assert feed(window, clock, lambda size: 0.3, rounds=4) == [8, 9, 10, 11]


def test_the_window_grows_only_when_it_was_the_bound():
    clock = FakeClock()
    window = InFlightWindow(allowed_rate=lambda: None, clock=clock)
    for _ in range(100):
        clock.now += 0.1
        window.record(0.1, Outcome.ANSWERED)  # never bound: little to fetch
    assert window.size == INITIAL_WINDOW


# --- the rate gate against a fixed-window server ----------------------------------------


@dataclass
class WindowServer:
    """Counts requests in fixed windows at arrival, as GTMCLI and the sandbox do."""

    limit: int
    window_seconds: int
    counts: dict[int, int] = field(default_factory=dict)
    refused: int = 0

    def answer(self, at: float) -> tuple[int, dict[str, str], float]:
        window = math.floor(at / self.window_seconds)
        used = self.counts.get(window, 0)
        allowed = used < self.limit
        if allowed:
            used += 1
            self.counts[window] = used
        else:
            self.refused += 1
        reset = (window + 1) * self.window_seconds
        headers = {"X-RateLimit-Limit": str(self.limit),
                   "X-RateLimit-Remaining": str(self.limit - used),
                   "X-RateLimit-Reset": str(reset)}
        return (200 if allowed else 429), headers, math.ceil(reset - at)


@dataclass
class Simulated:
    seconds: float  # first request sent to last answer
    span: float  # first request counted to last answer, as the sandbox's stats measure
    sent: int
    gate: RateGate


def simulate(server: WindowServer, *, requests: int, workers: int, upstream: float,
             downstream: float, start: float, jitter: float = 0.0) -> Simulated:
    """Workers sending `requests` through one gate.

    As in the tap, one request (the job list) is answered before the others start. Each
    request reaches the server `upstream` seconds after it starts, plus up to `jitter`
    (seeded: the same every run), and is answered `downstream` seconds later."""
    clock = FakeClock(start)
    gate = RateGate(clock=clock, wall_clock=clock, wait=lambda seconds: None)
    delays = random.Random(11)
    events: list[tuple[float, int, str, int, int]] = []
    order = 0
    left = requests
    sent = 0
    first_counted: float | None = None
    pending: dict[int, tuple[int, dict[str, str], float]] = {}
    waits: dict[int, float] = {}  # ticket -> seconds left to its booked start
    in_flight = 0  # booked and not answered

    def push(at: float, kind: str, worker: int, ticket: int = -1) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (at, order, kind, worker, ticket))

    def wait(worker: int, ticket: int, delay: float) -> None:
        # As RateGate.wait_turn: a start booked well ahead looks again after RECHECK for
        # a sooner moment; a nearer one sleeps to its start.
        if gate.looks_again(delay):
            waits[ticket] = delay - RECHECK
            push(clock.now + RECHECK, "sooner", worker, ticket)
        else:
            push(clock.now + delay, "start", worker, ticket)

    def book(worker: int) -> None:
        nonlocal in_flight
        in_flight += 1
        # As the tap's pipeline tells it: requests not sent yet, and those in flight.
        gate.expect(left + in_flight)
        ticket, delay = gate.reserve(worker=worker)
        wait(worker, ticket, delay)

    push(start, "next", 0)
    while events:
        clock.now, _, kind, worker, ticket = heapq.heappop(events)
        if kind == "next" and left > 0:
            left -= 1
            book(worker)
        elif kind == "sooner":
            wait(worker, ticket, gate.sooner(ticket, waits.pop(ticket), worker=worker))
        elif kind == "start":
            delay = gate.recheck(ticket, worker=worker)
            if delay > 0:
                push(clock.now + delay, "start", worker, ticket)
            else:
                sent += 1
                push(clock.now + upstream + delays.uniform(0, jitter), "arrive", worker,
                     ticket)
        elif kind == "arrive":
            first_counted = clock.now if first_counted is None else first_counted
            pending[ticket] = server.answer(clock.now)
            push(clock.now + downstream, "answer", worker, ticket)
        elif kind == "answer":
            status, headers, retry_after = pending.pop(ticket)
            in_flight -= 1  # a refused one is booked again, below
            gate.observe(status, headers, retry_after if status == 429 else None,
                         ticket=ticket, worker=worker)
            if status == 429:
                push(clock.now + retry_after, "retry", worker)
            else:
                push(clock.now, "next", worker)
            if ticket == 0:
                for other in range(1, workers):
                    push(clock.now, "next", other)
        elif kind == "retry":
            book(worker)
    assert first_counted is not None
    return Simulated(clock.now - start, clock.now - first_counted, sent, gate)


@pytest.mark.parametrize("latency", [0.1, 0.3, 0.8])
@pytest.mark.parametrize("upstream_share", [0.5, 1.0])
@pytest.mark.parametrize("requests", [301, 401])
def test_a_one_second_window_is_used_without_a_429_storm(latency, upstream_share, requests):
    server = WindowServer(limit=50, window_seconds=1)
    workers = math.ceil(50 * latency * 1.25) + 1  # what the in-flight window would hold
    run = simulate(server, requests=requests, workers=workers,
                   upstream=latency * upstream_share,
                   downstream=latency * (1 - upstream_share), start=1000.3)
    assert server.refused == 0
    assert run.sent == sum(server.counts.values()) == requests
    # The share of the budget the issue measures: the requests' worth of windows over
    # the time from the first request counted to the last answer.
    assert (requests / 50) / run.span >= 0.85
    # Every window the run covered is nearly full, but the first (it holds the job list
    # alone while its answer travels) and the last two (what is left over).
    counts = [count for _, count in sorted(server.counts.items())]
    assert all(count >= 45 for count in counts[1:-2]), counts


@pytest.mark.parametrize("latency", [0.3, 0.8])
def test_a_request_counted_within_a_window_uses_the_whole_limit_from_the_start(latency):
    # GTMCLI counts a request when it arrives: here the whole latency before it (as the
    # sandbox's --latency-ms does), with up to 20 ms of jitter on the way. Shorter than
    # the window, so every start can be placed whole inside one however rough the range
    # of the delay: no window is left short while it is learned.
    server = WindowServer(limit=50, window_seconds=1)
    run = simulate(server, requests=601, workers=64, upstream=latency, downstream=0.0,
                   start=1000.7, jitter=0.02)
    soonest, latest = run.gate.delay_bounds()
    assert soonest <= latency < latest  # holds the delays seen
    assert server.refused == 0
    counts = [count for _, count in sorted(server.counts.items())]
    # Every window after the first is full, but for a place now and then left to a start
    # aimed across its end (that counted in the next): the run needs no more windows
    # than a full one each would take.
    assert counts[1:-1] and all(count >= 49 for count in counts[1:-1]), counts
    assert len(counts) - 1 == math.ceil((601 - counts[0]) / 50), counts


@pytest.mark.parametrize("latency", [0.3, 0.8])
def test_a_start_aimed_across_a_window_end_lets_the_last_window_start_before_it_opens(
    latency,
):
    # The job list is counted early in its window, so the first pages are counted in the
    # same window, and every window is full from the first: nothing shows how soon after
    # its start a request is counted. Without that, a start whose window opens later can
    # only go when it opens, and the last window's requests are answered a whole delay
    # after its opening. The run's last window has places spare (301 = 50 + 5 x 50 + 1),
    # so the last start of a window may be aimed across its end: its answer halves the
    # range, and the last window's starts go before it opens.
    server = WindowServer(limit=50, window_seconds=1)
    start = 1000.25 if latency == 0.8 else 1000.05  # list counted at 1001.05 / 1000.35
    run = simulate(server, requests=301, workers=64, upstream=latency, downstream=0.0,
                   start=start, jitter=0.02)
    assert server.refused == 0
    counts = sorted(server.counts.items())
    first, last = counts[0][0], counts[-1][0]
    assert last - first == 6  # the fewest windows 301 requests need from this phase
    assert all(count >= 49 for _, count in counts[:-1]), counts
    soonest, latest = run.gate.delay_bounds()
    assert 0.5 * latency < soonest <= latency < latest  # learned: it started at 0
    # The last request is answered soon after its window opened, not a delay after.
    assert start + run.seconds < last + 0.4 * latency


def test_no_start_is_aimed_across_a_window_end_when_the_run_needs_every_place():
    # The same phase with 300 requests: six windows exactly full. A start counted in the
    # next window would leave a place unused here and take a seventh window.
    server = WindowServer(limit=50, window_seconds=1)
    run = simulate(server, requests=300, workers=64, upstream=0.8, downstream=0.0,
                   start=1000.25, jitter=0.02)
    assert server.refused == 0
    assert [count for _, count in sorted(server.counts.items())] == [50] * 6
    assert run.gate.delay_bounds()[0] == 0.0  # never learned: no start was aimed across


def test_when_all_that_is_left_fits_in_the_window_it_may_all_be_in_flight():
    clock = FakeClock(1000.2)
    gate = RateGate(clock=clock, wall_clock=clock, wait=lambda seconds: None)
    gate.observe(200, headers(50, 40, 1001), ticket=gate.reserve(worker=1)[0], worker=1)
    window = InFlightWindow(allowed_rate=gate.allowed_rate, clock=clock)
    for _ in range(10):
        window.record(0.8, Outcome.ANSWERED)
    gate.expect(200)  # more than the window allows: paced by Little's law
    assert gate.allowed_rate() == pytest.approx(40 / (0.8 - JITTER))
    assert window.size == math.ceil(40 / (0.8 - JITTER) * 0.8 * 1.25) + 1
    gate.expect(39)  # fits in the 40 places left: no pace, all of it at once
    assert gate.allowed_rate() == math.inf
    assert window.size == LIMITED_CAP


@pytest.mark.parametrize("latency", [1.5, 2.5])
def test_a_request_counted_a_window_or_more_later_is_learned_then_the_whole_limit_used(
    latency,
):
    # Longer than the window: a start can arrive in either of two windows until the
    # delay is known, so the gate keeps slack to find out, then fills every window.
    server = WindowServer(limit=50, window_seconds=1)
    run = simulate(server, requests=601, workers=128, upstream=latency, downstream=0.0,
                   start=1000.7, jitter=0.02)
    soonest, latest = run.gate.delay_bounds()
    assert soonest <= latency < latest  # holds the delays seen
    assert latest - soonest <= 0.1  # learned
    assert server.refused <= 0.02 * 601
    counts = [count for _, count in sorted(server.counts.items())]
    assert all(count == 50 for count in counts[-5:-1]), counts


@pytest.mark.parametrize("workers", [2, 4, 8])
def test_a_sixty_second_window_is_spread_then_the_rest_goes_at_the_next_window(workers):
    server = WindowServer(limit=120, window_seconds=60)
    start = 960.5  # just after a window opened: the next one opens at 1020
    run = simulate(server, requests=151, workers=workers, upstream=0.15,
                   downstream=0.15, start=start)
    assert server.refused == 0
    assert sum(server.counts.values()) == 151
    assert server.counts[16] >= 110  # most of the budget of the first window used
    ideal = 1020 - start
    assert run.seconds <= 1.2 * ideal
    # Spread, not burst: the first window's 120 requests took most of its 59.5 s.
    assert run.seconds >= ideal


def test_without_limit_headers_the_gate_does_not_pace():
    clock = FakeClock()
    waits: list[float] = []
    gate = RateGate(clock=clock, wall_clock=clock, wait=waits.append)
    for _ in range(100):
        gate.wait_turn()
        gate.observe(200, {})
    assert waits == []
    assert gate.allowed_rate() is None


def headers(limit: int, remaining: int, reset: float) -> dict[str, str]:
    return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset)}


def test_a_start_that_goes_late_is_kept_at_its_real_moment_and_widens_the_delay_range():
    clock = FakeClock(1000.5)
    gate = RateGate(clock=clock, wall_clock=clock, wait=lambda seconds: None)
    first, _ = gate.reserve(worker=1)
    clock.now += 0.2
    gate.observe(200, headers(50, 49, 1001), ticket=first, worker=1)
    ticket, delay = gate.reserve(worker=2)
    clock.now += delay + 0.15  # the thread woke 150 ms after its booked moment
    gate.started(ticket)
    assert gate._starts[ticket].at == clock.now
    clock.now += 0.2
    gate.observe(200, headers(50, 48, 1001), ticket=ticket, worker=2)
    # Counted before its window's Reset: at most 0.15 s after it really started (taken
    # from the booked moment, that would be 0.3 s). The next start may go as late as
    # this one: the range is widened by those 0.15 s, more than JITTER.
    assert gate.delay_bounds() == (0.0, pytest.approx(0.15 + 0.15))


def test_the_window_is_the_common_divisor_of_resets_on_a_grid_and_the_shortest_step_else():
    # Every other window skipped (a slow link), then a step of three: one-second windows.
    clock = FakeClock(1000.8)
    gate = RateGate(clock=clock, wall_clock=clock, wait=lambda seconds: None)
    for reset in (1001, 1003, 1005, 1008):
        clock.now = reset - 0.2
        gate.observe(200, headers(50, 49, reset), ticket=gate.reserve(worker=1)[0], worker=1)
    assert gate.window_seconds == 1.0
    # Windows that open at each client's first request: steps are not multiples of the
    # window, and an answer told of 59 s left in one. The shortest step stands.
    clock = FakeClock(1000.0)
    gate = RateGate(clock=clock, wall_clock=clock, wait=lambda seconds: None)
    for reset in (1059, 1121, 1183):
        clock.now = reset - 59
        gate.observe(200, headers(120, 119, reset), ticket=gate.reserve(worker=1)[0],
                     worker=1)
    assert gate.window_seconds == 62.0
    # A grid at first sight (steps of 2 and 3 s), then an answer with 1.5 s left: the
    # windows are longer than the common divisor, and the shortest step stands.
    clock = FakeClock(1000.8)
    gate = RateGate(clock=clock, wall_clock=clock, wait=lambda seconds: None)
    for reset, left in ((1001, 0.2), (1003, 0.2), (1006, 0.2), (1008, 1.5), (1012, 0.2)):
        clock.now = reset - left
        gate.observe(200, headers(50, 49, reset), ticket=gate.reserve(worker=1)[0], worker=1)
    assert gate.window_seconds == 2.0


def test_a_spent_window_holds_every_worker_until_reset_whatever_its_length():
    clock = FakeClock(1000.0)
    gate = RateGate(clock=clock, wall_clock=clock, wait=lambda seconds: None)
    gate.observe(200, {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0",
                       "X-RateLimit-Reset": "1042"}, ticket=0, worker=1)
    delays = [gate.reserve(worker=worker)[1] for worker in range(2, 6)]
    assert delays[0] == pytest.approx(42.0)
    assert all(delay >= 42.0 for delay in delays)


def test_a_429_holds_every_worker_including_starts_booked_before_it():
    clock = FakeClock(1000.0)
    gate = RateGate(clock=clock, wall_clock=clock, wait=lambda seconds: None)
    first, _ = gate.reserve(worker=1)
    gate.observe(200, {"X-RateLimit-Limit": "120", "X-RateLimit-Remaining": "100",
                       "X-RateLimit-Reset": "1060"}, ticket=first, worker=1)
    gate.expect(1000)  # more to do than the window allows: starts are spread
    booked = [gate.reserve(worker=worker) for worker in range(2, 6)]
    # 100 left of 120, spread over the 60 s left (less the jitter margin).
    spacing = (60 - JITTER) / 100
    assert [delay for _, delay in booked][1:] == pytest.approx(
        [spacing, 2 * spacing, 3 * spacing])
    retry_after = parse_retry_after(formatdate(1012, usegmt=True), now=1000.0)
    assert retry_after == 12.0
    gate.observe(429, {}, retry_after, ticket=booked[0][0], worker=2)
    # The worker that was told backs off by its own retry policy, not by the gate.
    assert gate.reserve(worker=2)[1] < 12.0
    # Starts booked before the 429 are held too when their moment comes.
    for ticket, delay in booked[1:]:
        clock.now = 1000.0 + delay
        assert clock.now + gate.recheck(ticket, worker=ticket + 10) >= 1012.0
    assert clock.now + gate.reserve(worker=9)[1] >= 1012.0


# --- result pages read ahead across jobs ------------------------------------------------


class FakeJobs:
    """`send` for the pipeline: each job's pages, answered after a random pause."""

    def __init__(self, pages_per_job: dict[str, int], jitter: float = 0.003, seed: int = 3,
                 failing: frozenset[tuple[str, int]] = frozenset()) -> None:
        self.pages_per_job = pages_per_job
        self.random = random.Random(seed)
        self.jitter = jitter
        self.failing = failing
        self.lock = threading.Lock()
        self.sent: list[tuple[str, int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def prepare(self, job: str, page: int) -> tuple[str, int]:
        self.sent.append((job, page))  # the reading thread prepares, in order
        return job, page

    def send(self, request: tuple[str, int], stop: threading.Event) -> ResultPage:
        job, page = request
        with self.lock:
            pause = self.random.uniform(0, self.jitter)
        time.sleep(pause)
        self.gate.wait()
        if (job, page) in self.failing:
            raise LookupError(f"{job} page {page} failed")
        total = self.pages_per_job[job]
        rows = [{"job": job, "row_number": (page - 1) * 10 + i + 1} for i in range(10)]
        return ResultPage(page, rows if page <= total else [], total, byte_size=PAGE_BYTES)

    def pipeline(self, window: int, max_waiting_bytes: int = 1 << 30) -> PagePipeline:
        return PagePipeline(prepare=self.prepare, send=self.send, window=lambda: window,
                            workers=window, max_waiting_bytes=max_waiting_bytes)


def read_all(pipeline: PagePipeline, jobs: list[str]) -> list[tuple[str, int]]:
    return [(job, page.number) for job in jobs for page in pipeline.pages(job)]


def test_pages_come_out_in_job_then_page_order_whatever_order_they_finish_in():
    pages = {f"job{n:02}": 1 + n % 4 for n in range(30)}
    fake = FakeJobs(pages)
    pipeline = fake.pipeline(window=8)
    jobs = list(pages)
    pipeline.plan([(job, count) for job, count in pages.items()])
    expected = [(job, page) for job in jobs for page in range(1, pages[job] + 1)]
    assert read_all(pipeline, jobs) == expected
    assert fake.sent == expected  # requested in the same order, each once
    assert pipeline.peak_in_flight <= 8
    pipeline.close()


def test_later_jobs_are_requested_while_the_first_is_still_awaited():
    pages = {f"job{n}": 1 for n in range(6)}
    fake = FakeJobs(pages, jitter=0)
    fake.gate.clear()  # no answer comes back until released
    pipeline = fake.pipeline(window=4)
    pipeline.plan([(job, 1) for job in pages])
    reader = pipeline.pages("job0")
    got: list[ResultPage] = []
    thread = threading.Thread(target=lambda: got.append(next(reader)))
    thread.start()
    while pipeline.in_flight < 4:
        time.sleep(0.001)
    # One-page jobs: the window is filled with the pages of the next jobs, not idle.
    assert fake.sent == [("job0", 1), ("job1", 1), ("job2", 1), ("job3", 1)]
    fake.gate.set()
    thread.join()
    assert got[0].number == 1
    assert read_all(pipeline, list(pages)[1:]) == [(f"job{n}", 1) for n in range(1, 6)]
    pipeline.close()


def test_more_pages_than_the_estimate_are_read_and_fewer_stop_the_job():
    fake = FakeJobs({"a": 3, "b": 1, "c": 2})
    pipeline = fake.pipeline(window=6)
    # "a" was estimated at one page, "b" at three: the answers' total_pages decide.
    pipeline.plan([("a", 1), ("b", 3), ("c", None)])
    assert read_all(pipeline, ["a", "b", "c"]) == [
        ("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1), ("c", 2)]
    pipeline.close()


def test_a_failed_page_surfaces_at_its_turn_and_later_jobs_still_read():
    fake = FakeJobs({"a": 2, "b": 3, "c": 1}, failing=frozenset({("b", 2)}))
    pipeline = fake.pipeline(window=6)
    pipeline.plan([("a", 2), ("b", 3), ("c", 1)])
    assert [page.number for page in pipeline.pages("a")] == [1, 2]
    seen = []
    with pytest.raises(LookupError, match="b page 2 failed"):
        seen.extend(page.number for page in pipeline.pages("b"))
    assert seen == [1]
    assert [page.number for page in pipeline.pages("c")] == [1]
    pipeline.close()


def test_jobs_planned_but_not_asked_for_are_dropped_and_unplanned_ones_read():
    fake = FakeJobs({"a": 1, "b": 2, "c": 1, "z": 2})
    pipeline = fake.pipeline(window=2)
    pipeline.plan([("a", 1), ("b", 2), ("c", 1)])
    assert [page.number for page in pipeline.pages("c")] == [1]
    assert [page.number for page in pipeline.pages("z", 2)] == [1, 2]
    pipeline.close()


def test_the_byte_cap_holds_across_jobs_while_the_reader_is_slow():
    pages = {f"job{n:02}": 3 for n in range(40)}
    fake = FakeJobs(pages, jitter=0.001)
    pipeline = fake.pipeline(window=4, max_waiting_bytes=10 * PAGE_BYTES)
    pipeline.plan([(job, 3) for job in pages])
    read = []
    for job in pages:
        for page in pipeline.pages(job):
            read.append((job, page.number))
            time.sleep(0.002)  # the reader is the slow part: pages pile up ahead
    assert len(read) == 120
    # No request goes out once the cap is full: at most the cap, plus the pages that
    # were already in flight then (the window).
    assert 10 * PAGE_BYTES <= pipeline.peak_waiting_bytes <= (10 + 4) * PAGE_BYTES
    assert pipeline.waiting_bytes == 0
    pipeline.close()


# --- the tap over many jobs -------------------------------------------------------------


def test_many_small_jobs_keep_order_state_after_each_job_and_exact_requests(
    sandbox, tap_config, tmp_path
):
    job_ids = []
    for _ in range(25):
        job_ids += sandbox.seed_jobs("find", 120)
        sandbox.advance_clock(1)
    sandbox.reset_stats()
    run = run_tap(tmp_path, {**tap_config, "results_per_page": 50})
    assert run.returncode == 0, run.stderr
    assert "gtm_live_tap_test_secret" not in run.stdout + run.stderr
    # Per job, oldest first: its rows in order, its record, then a STATE naming it.
    kinds = []
    for message in run.messages:
        if message["type"] == "RECORD":
            record = message["record"]
            kinds.append(("job", record["id"]) if message["stream"] == "jobs"
                         else ("row", record["job_id"], record["row_number"]))
        elif message["type"] == "STATE":
            bookmarks = message["value"]["bookmarks"]["jobs"]
            kinds.append(("state", bookmarks.get("newest_ids", [None])[-1]))
    expected = []
    for job_id in job_ids:
        # The SDK syncs a job's children before it writes the job's own record.
        expected += [*[("row", job_id, n) for n in range(1, 121)], ("job", job_id),
                     ("state", job_id)]
    # (A STATE may be repeated, at the end of the stream; each job has one after it.)
    deduplicated = [kind for index, kind in enumerate(kinds)
                    if kind != ("state", None) and (index == 0 or kind != kinds[index - 1])]
    assert deduplicated == expected
    assert sandbox.stats()["requests"] == {"GET /v1/jobs": 1, RESULTS: 25 * 3}


# --- closing the read-ahead while workers wait ------------------------------------------

#: How long a test waits for a thread that should end at once: only a guard against a
#: hang (the waits cut short below are 30 s), never a measure of speed.
HANG_GUARD = 10.0


def test_close_sets_the_stop_of_every_request_sent_and_wakes_a_waiting_reader():
    stops: list[threading.Event] = []
    woken: list[bool] = []

    def send(request: tuple[str, int], stop: threading.Event) -> ResultPage:
        stops.append(stop)
        # A retry's wait: the answer only comes after 30 s, unless the stop is set.
        woken.append(stop.wait(30))
        raise GTMCLICancelledError("stopped")

    pipeline = PagePipeline(prepare=lambda job, page: (job, page), send=send,
                            window=lambda: 2, workers=2, max_waiting_bytes=1 << 20)
    raised: list[BaseException] = []

    def read_in_thread(job: str) -> threading.Thread:
        def read() -> None:
            try:
                list(pipeline.pages(job))
            except BaseException as error:  # what the reader got, checked below
                raised.append(error)
        thread = threading.Thread(target=read)
        thread.start()
        return thread

    pipeline.plan([("a", 1), ("b", 1)])
    reader = read_in_thread("a")
    while len(stops) < 2:  # both pages sent, their workers waiting
        time.sleep(0.001)
    pipeline.close()
    reader.join(HANG_GUARD)
    assert not reader.is_alive()
    assert [type(error) for error in raised] == [GTMCLICancelledError]
    assert "job a" in str(raised[0])
    while len(woken) < 2:
        time.sleep(0.001)
    assert woken == [True, True]  # woken by the stop, not after 30 s
    assert stops[0] is stops[1]
    # A job read after a close starts afresh, with a stop of its own.
    pipeline.plan([("c", 1)])
    later = read_in_thread("c")
    while len(stops) < 3:
        time.sleep(0.001)
    assert stops[2] is not stops[0] and not stops[2].is_set()
    pipeline.close()
    later.join(HANG_GUARD)
    assert not later.is_alive()
    assert [type(error) for error in raised] == [GTMCLICancelledError] * 2


class WatchedStream:
    """The tap's job_results stream against the sandbox, telling when a page worker
    starts a wait (its backoff, or a hold at the rate gate) and when it returns."""

    def __init__(self, tap_config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
        from tap_gtmcli.tap import client

        self.waits: list[float] = []
        self.waiting = threading.Event()
        self.returned = threading.Event()
        self.worker_raised: list[BaseException] = []
        backoff_sleep, gate_wait = client.sleep_unless_stopped, client._wait_at_gate

        def watched_sleep(seconds: float, stop: threading.Event | None, what: str) -> None:
            self.waits.append(seconds)
            self.waiting.set()
            backoff_sleep(seconds, stop, what)

        def watched_gate(seconds: float) -> None:
            self.waits.append(seconds)
            self.waiting.set()
            gate_wait(seconds)

        monkeypatch.setattr(client, "sleep_unless_stopped", watched_sleep)
        monkeypatch.setattr(client, "_wait_at_gate", watched_gate)  # before the gate is built
        self.stream = TapGTMCLI(config=tap_config).streams["job_results"]
        fetch_page = self.stream.fetch_page

        def watched_fetch(*args, **kwargs):  # type: ignore[no-untyped-def]
            try:
                return fetch_page(*args, **kwargs)
            except BaseException as error:
                self.worker_raised.append(error)
                raise
            finally:
                self.returned.set()

        self.stream.fetch_page = watched_fetch  # type: ignore[method-assign]
        self.reader_raised: list[BaseException] = []

    def start_reading(self, job_id: str) -> threading.Thread:
        context = {"job_id": job_id, "job_type": "validate", "total": 10}
        self.stream.read_ahead([context])

        def read() -> None:
            try:
                list(self.stream.result_pages(context))
            except BaseException as error:
                self.reader_raised.append(error)

        reader = threading.Thread(target=read)
        reader.start()
        return reader


def test_stopping_the_read_ahead_cuts_short_a_worker_sleeping_out_retry_after(
    sandbox, tap_config, monkeypatch
):
    job_id = sandbox.seed_jobs("validate", 10)[0]
    sandbox.add_fault_rules([{"method": "GET", "path_prefix": f"/v1/jobs/{job_id}/results",
                              "status": 503, "retry_after": "30", "count": 5}])
    watched = WatchedStream(tap_config, monkeypatch)
    reader = watched.start_reading(job_id)
    assert watched.waiting.wait(HANG_GUARD)  # answered 503: sleeping out Retry-After: 30
    assert watched.waits == [30.0]
    watched.stream.stop_reading_ahead()  # the run stops (an error in a later job, ...)
    assert watched.returned.wait(HANG_GUARD)
    reader.join(HANG_GUARD)
    assert not reader.is_alive()
    assert [type(e) for e in watched.worker_raised] == [GTMCLICancelledError]
    assert [type(e) for e in watched.reader_raised] == [GTMCLICancelledError]
    assert watched.waits == [30.0]
    # One request, the one answered 503: none after the stop.
    assert sandbox.stats()["requests"][RESULTS] == 1


def test_stopping_the_read_ahead_releases_a_worker_held_by_the_rate_gate(
    sandbox, tap_config, monkeypatch
):
    job_id = sandbox.seed_jobs("validate", 10)[0]
    watched = WatchedStream(tap_config, monkeypatch)
    # Another worker was answered 429 with Retry-After: 30: every other one is held.
    watched.stream.rate_gate.observe(429, {}, retry_after=30.0, worker=-1)
    reader = watched.start_reading(job_id)
    assert watched.waiting.wait(HANG_GUARD)
    assert watched.waits == [pytest.approx(30.0, abs=5.0)]
    watched.stream.stop_reading_ahead()
    assert watched.returned.wait(HANG_GUARD)
    reader.join(HANG_GUARD)
    assert not reader.is_alive()
    assert [type(e) for e in watched.worker_raised] == [GTMCLICancelledError]
    assert "rate gate" in str(watched.worker_raised[0])
    assert sandbox.stats()["requests"].get(RESULTS, 0) == 0  # never sent


def test_a_page_waiting_for_its_turn_counts_the_bytes_it_holds(sandbox, tap_config):
    """The byte cap counts the RECORD lines a page holds, not the (smaller) answer."""
    job_id = sandbox.seed_jobs("validate", 300)[0]
    stream = TapGTMCLI(config=tap_config).streams["job_results"]
    context = {"job_id": job_id, "job_type": "validate", "total": 300}
    request = stream.prepare_page_request(context, 1)
    page = stream.fetch_page(1, request, context)
    assert page.row_count == 300 and page.record_lines is not None
    assert page.byte_size == len(page.record_lines)
    answer = stream.send_with_retries(stream.prepare_page_request(context, 1), context)
    assert page.byte_size > len(answer.content)
