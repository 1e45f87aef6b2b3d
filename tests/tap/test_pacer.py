"""The pacer, one rule at a time, on a fake clock: the server's word (Remaining less
what went out since), our own log of starts, probes, 429 holds, the window's length as
learned, and how many requests may be in flight. Then the tap itself: a 429 that names
its wait is waited out for `max_rate_limit_wait` seconds, not `max_retries` tries.
No assertion depends on the machine's timing."""

from __future__ import annotations

import threading
import time
from email.utils import formatdate

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from tap_gtmcli.api.errors import GTMCLICancelledError, GTMCLIRetriableError
from tap_gtmcli.api.retry import RetryBudget, RetryPolicy, named_wait
from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tap_gtmcli.tap.pacer import (
    INITIAL_WINDOW,
    LIMITED_CAP,
    MIN_SHARE,
    POLITE_CAP,
    SLACK,
    UNNAMED_HOLD,
    Pacer,
)
from tests.helpers.keys import API_KEY
from tests.helpers.sandboxes import RESULTS_RULE
from tests.helpers.tap_runs import run_tap, run_tap_in_process

#: A Unix moment on a whole minute: the fake clock is both the monotonic and wall clock.
START = 1_767_225_600.0


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def nap(self, seconds: float) -> None:
        self.now += seconds


def paced(clock: FakeClock, max_in_flight: int | None = None) -> Pacer:
    return Pacer(max_in_flight=max_in_flight, clock=clock, wall_clock=clock, nap=clock.nap)


def answer(status: int = 200, **headers: str | float) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    names = {"limit": "X-RateLimit-Limit", "remaining": "X-RateLimit-Remaining",
             "reset": "X-RateLimit-Reset", "retry_after": "Retry-After"}
    response.headers = CaseInsensitiveDict(
        {names[name]: str(value) for name, value in headers.items()})
    return response


def waited(pacer: Pacer, clock: FakeClock) -> float:
    """Seconds the next acquire() waited; its ticket is answered 200 with no headers."""
    before = clock.now
    pacer.observe(pacer.acquire(), answer())
    return clock.now - before


def start(pacer: Pacer, clock: FakeClock) -> tuple[int, float]:
    """A request started (not answered): its ticket, and the seconds it waited."""
    before = clock.now
    ticket = pacer.acquire()
    return ticket, clock.now - before


# --- the server's word and our log ----------------------------------------------------


def test_before_any_limit_is_told_nothing_waits():
    clock = FakeClock()
    pacer = paced(clock)
    assert [start(pacer, clock)[1] for _ in range(20)] == [0.0] * 20
    assert pacer.limit is None
    assert pacer.window == INITIAL_WINDOW


def test_remaining_less_what_is_in_flight_goes_at_once_then_the_log_waits():
    clock = FakeClock(START + 0.5)
    pacer = paced(clock)
    first, _ = start(pacer, clock)
    three = [start(pacer, clock)[0] for _ in range(3)]  # out before the first answer
    # 10 a second; 9 left after the first was counted; the window ends in 0.5 s.
    pacer.observe(first, answer(limit=10, remaining=9, reset=START + 1))
    # 9 less the 3 in flight: 6 go at once, and no more.
    assert [start(pacer, clock)[1] for _ in range(6)] == [0.0] * 6
    # Counted after the first, answered in another order: the least Remaining holds
    # (6, less the 6 in flight).
    for left, ticket in zip([6, 8, 7], three, strict=True):
        pacer.observe(ticket, answer(limit=10, remaining=left, reset=START + 1))
    # Our log holds 10 starts of a 10 a second limit: a probe after the long-run gap,
    # then the next start when the first leaves the log's window.
    log_seconds = 1 + SLACK
    assert start(pacer, clock)[1] == pytest.approx(log_seconds / 10, abs=1e-4)
    start(pacer, clock)
    assert clock.now == pytest.approx(START + 0.5 + log_seconds, abs=1e-4)


def test_the_log_lets_the_whole_limit_go_whatever_the_answers_say_of_our_own_starts():
    clock = FakeClock(START + 0.2)
    pacer = paced(clock)
    tickets = [start(pacer, clock)[0] for _ in range(10)]
    for number, ticket in enumerate(tickets):  # every one counted, all ours
        pacer.observe(ticket, answer(limit=10, remaining=9 - number, reset=START + 1))
    start(pacer, clock)  # a probe (see below)
    start(pacer, clock)
    # Not at the Reset (0.8 s later): a full second after the first start.
    assert clock.now == pytest.approx(START + 0.2 + 1 + SLACK, abs=1e-4)


def test_a_window_others_have_used_holds_until_its_reset():
    clock = FakeClock(START + 0.4)
    pacer = paced(clock)
    ticket, _ = start(pacer, clock)
    # Spent, and not by us: our log knows one start only.
    pacer.observe(ticket, answer(limit=50, remaining=0, reset=START + 1))
    assert waited(pacer, clock) == pytest.approx(0.6)


@pytest.mark.parametrize(("time_left", "seconds", "log_seconds"), [
    (0.7, 1.0, 1.0),  # under a second: a one-second window
    (1.9, 1.0, 1.0),  # a one-second window whose Reset was rounded up
    (59.6, 59.0, 60.0),  # a minute seen just after it opened, or its Reset rounded down
    (60.4, 60.0, 61.0),  # a minute whose Reset was rounded up
])
def test_the_window_is_the_most_time_left_seen_rounded_down(time_left, seconds, log_seconds):
    clock = FakeClock()
    pacer = paced(clock)
    pacer.observe(pacer.acquire(), answer(limit=5, remaining=4, reset=START + time_left))
    assert pacer.window_seconds == seconds
    # A Reset in whole seconds can make that a second short, unless it is one second.
    tickets = [start(pacer, clock)[0] for _ in range(4)]
    assert tickets == [1, 2, 3, 4]
    start(pacer, clock)  # a probe
    start(pacer, clock)
    assert clock.now == pytest.approx(START + log_seconds + SLACK, abs=1e-4)


# --- 429s ------------------------------------------------------------------------------


def test_a_429_holds_every_request_for_retry_after_exactly():
    clock = FakeClock()
    pacer = paced(clock)
    pacer.observe(pacer.acquire(), answer(429, retry_after=7))
    assert waited(pacer, clock) == pytest.approx(7.0)
    assert waited(pacer, clock) == 0.0  # and no longer


def test_a_429_with_an_http_date_holds_until_that_moment():
    clock = FakeClock()
    pacer = paced(clock)
    pacer.observe(pacer.acquire(), answer(429, retry_after=formatdate(START + 12, usegmt=True)))
    assert waited(pacer, clock) == pytest.approx(12.0)


def test_a_429_without_retry_after_holds_until_its_reset_or_for_a_moment():
    clock = FakeClock()
    pacer = paced(clock)
    pacer.observe(pacer.acquire(), answer(429, limit=5, remaining=0, reset=START + 3))
    assert waited(pacer, clock) == pytest.approx(3.0)
    bare = paced(clock)
    bare.observe(bare.acquire(), answer(429))
    assert waited(bare, clock) == pytest.approx(UNNAMED_HOLD)


def test_each_429_uses_less_of_the_limit_down_to_a_floor():
    clock = FakeClock()
    pacer = paced(clock)
    pacer.observe(pacer.acquire(), answer(limit=20, remaining=19, reset=START + 1))
    for _ in range(12):  # let through by the word, refused all the same
        pacer.observe(pacer.acquire(), answer(429, retry_after=0))
    assert pacer.slack == SLACK  # not our log's doing
    pacer.observe(pacer.acquire(), answer(limit=20, remaining=0, reset=START + 1))
    # Past the window, the word still says 0: our log allows MIN_SHARE of 20 (0.9 ** 12
    # is less), then the next waits for a probe's gap.
    clock.now += 10
    free = 0
    while start(pacer, clock)[1] == 0.0:
        free += 1
    assert free == int(20 * MIN_SHARE)


def test_a_refused_start_of_our_log_widens_its_slack_once_per_burst():
    clock = FakeClock(START + 0.5)
    pacer = paced(clock)
    first = [start(pacer, clock)[0] for _ in range(3)]
    for left, ticket in zip([2, 1, 0], first, strict=True):  # 2.5 s left: 2 s, rounded down
        pacer.observe(ticket, answer(limit=3, remaining=left, reset=START + 3))
    assert pacer.window_seconds == 2.0
    probe, _ = start(pacer, clock)
    pacer.observe(probe, answer(429, limit=3, remaining=0, reset=START + 3, retry_after=1))
    assert pacer.slack == SLACK  # a probe tells nothing of the window
    burst = [start(pacer, clock)[0] for _ in range(3)]  # the log's 3.04 s have passed
    clock.now += 0.3
    for ticket in burst:  # refused: requests take longer to arrive than the slack allows
        pacer.observe(ticket, answer(429, limit=3, remaining=0, reset=START + 4,
                                     retry_after=1))
    assert pacer.slack == pytest.approx(2 * SLACK)
    assert pacer.window_seconds == 2.0


# --- probes --------------------------------------------------------------------------


def full_minute(clock: FakeClock) -> Pacer:
    """A pacer that has used all of a 4 per 60 s limit, told so by every answer."""
    pacer = paced(clock)
    tickets = [pacer.acquire() for _ in range(4)]
    for left, ticket in zip([3, 2, 1, 0], tickets, strict=True):
        pacer.observe(ticket, answer(limit=4, remaining=left, reset=START + 60))
    return pacer


def test_a_probe_goes_after_the_long_run_gap_and_more_follow_while_they_pass():
    clock = FakeClock()
    pacer = full_minute(clock)
    gap = (60 + 1 + SLACK) / 4  # the log's window over the limit
    probe, wait = start(pacer, clock)
    assert wait == pytest.approx(gap)
    pacer.observe(probe, answer(limit=4, remaining=0, reset=START + 60))  # a token came
    # One probe passed: two may be in flight, each a gap after the last start.
    assert [start(pacer, clock)[1] for _ in range(2)] == pytest.approx([gap, gap])


def test_a_refused_probe_ends_probing_and_holds_nobody():
    clock = FakeClock()
    pacer = full_minute(clock)
    probe, _ = start(pacer, clock)
    pacer.observe(probe, answer(429, limit=4, remaining=0, reset=START + 60, retry_after=45))
    assert pacer.throttled == 1
    _, wait = start(pacer, clock)
    # Not held for Retry-After by the others' account, nor probing: the log's window.
    assert clock.now == pytest.approx(START + 60 + 1 + SLACK)
    assert wait > 45


# --- how many may be in flight --------------------------------------------------------


def test_without_a_limit_the_window_doubles_each_round_trip_to_the_polite_cap():
    clock = FakeClock()
    pacer = paced(clock)
    sizes = []
    for _ in range(4):
        size = pacer.window
        sizes.append(size)
        tickets = [pacer.acquire() for _ in range(size)]
        clock.now += 0.3
        for ticket in tickets:
            pacer.observe(ticket, answer())
    assert sizes == [8, 16, 32, 32]
    assert sizes[-1] == POLITE_CAP
    assert paced(clock, max_in_flight=6).window == 6


def test_failures_halve_the_window_once_per_round_trip_then_it_grows_by_one():
    clock = FakeClock()
    pacer = paced(clock)
    tickets = [pacer.acquire() for _ in range(8)]
    clock.now += 0.3
    for ticket in tickets:
        pacer.observe(ticket, answer(503))  # a whole round trip of failures: halved once
    assert pacer.window == 4
    ticket = pacer.acquire()
    clock.now += 0.3
    pacer.observe(ticket, None)  # no answer at all, sent after the cut: halved again
    assert pacer.window == 2
    for _ in range(4):
        tickets = [pacer.acquire() for _ in range(pacer.window)]
        for ticket in tickets:
            pacer.observe(ticket, answer())
    # No slow start after a loss: 1/window more per answer, a little under one more per
    # round trip (2, 2.9, 3.9, 4.9, 5.9).
    assert pacer.window == 5


def test_with_a_limit_every_request_may_be_in_flight_up_to_the_cap():
    clock = FakeClock()
    pacer = paced(clock)
    pacer.observe(pacer.acquire(), answer(limit=50, remaining=49, reset=START + 1))
    assert pacer.window == LIMITED_CAP == pacer.max_window
    capped = paced(clock, max_in_flight=3)
    capped.observe(capped.acquire(), answer(limit=50, remaining=49, reset=START + 1))
    assert capped.window == capped.max_window == 3


# --- threads ---------------------------------------------------------------------------


def test_requests_start_in_the_order_they_asked_across_threads():
    pacer = Pacer()
    pacer.observe(pacer.acquire(), answer(429, retry_after=0.2))  # all held a moment
    order: list[int] = []
    threads = []
    for number in range(6):
        def go(number: int = number) -> None:
            pacer.acquire()
            order.append(number)
        thread = threading.Thread(target=go)
        thread.start()
        threads.append(thread)
        while pacer.waiting < number + 1:  # queued in this order
            time.sleep(0.001)
    for thread in threads:
        thread.join(10)
    assert order == list(range(6))


def test_a_retry_starts_before_every_request_not_yet_tried():
    """Pages are handed over in order: those read after a refused page wait for its
    answer, so its retry must not wait behind them as well."""
    pacer = Pacer()
    pacer.observe(pacer.acquire(), answer(429, retry_after=0.2))  # all held a moment
    order: list[str] = []
    threads = []
    for name, retry in [("first", False), ("second", False), ("third", False),
                        ("retry", True)]:
        def go(name: str = name, retry: bool = retry) -> None:
            pacer.acquire(retry=retry)
            order.append(name)
        thread = threading.Thread(target=go)
        thread.start()
        threads.append(thread)
        while pacer.waiting < len(threads):  # queued in this order
            time.sleep(0.001)
    for thread in threads:
        thread.join(10)
    assert order == ["retry", "first", "second", "third"]


def test_every_try_after_a_failure_asks_the_pacer_as_a_retry(sandbox, monkeypatch):
    """A 503 then a 429 on the one results page: its second and third tries are retries."""
    asked: list[bool] = []
    real_acquire = Pacer.acquire

    def acquire(self: Pacer, stop: threading.Event | None = None, *, retry: bool = False,
                waited_out: bool = False) -> int:
        asked.append(retry)
        return real_acquire(self, stop, retry=retry, waited_out=waited_out)

    monkeypatch.setattr(Pacer, "acquire", acquire)
    sandbox.seed_jobs("validate", 3)
    sandbox.add_fault_rules([{**RESULTS_RULE, "status": 503},
                             {**RESULTS_RULE, "status": 429, "retry_after": "0"}])
    run = run_tap_in_process({"api_key": API_KEY, "api_url": sandbox.url}, monkeypatch)
    assert run.error is None
    assert len(run.records("job_results")) == 3
    # The job list, then the page: once, then twice more as a retry.
    assert asked == [False, False, True, True]


def test_a_stop_set_while_waiting_ends_the_wait_without_a_start():
    pacer = Pacer()
    pacer.observe(pacer.acquire(), answer(429, retry_after=30))
    stop = threading.Event()
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            pacer.acquire(stop)
        except GTMCLICancelledError as error:
            raised.append(error)

    thread = threading.Thread(target=wait)
    thread.start()
    while not pacer.waiting:
        time.sleep(0.001)
    stop.set()
    thread.join(10)  # a guard against a hang: the hold is 30 s
    assert not thread.is_alive()
    assert "held by the pacer" in str(raised[0])
    assert pacer.waiting == 0


# --- the retry budget --------------------------------------------------------------------


def throttled(retry_after: float | None = None, reset: float | None = None) -> GTMCLIRetriableError:
    headers = {} if reset is None else {"reset": reset}
    return GTMCLIRetriableError("429", answer(429, **headers), retry_after)


def test_named_waits_are_bounded_by_time_not_by_max_retries():
    budget = RetryBudget(RetryPolicy(max_retries=1, max_rate_limit_wait=30))
    assert [budget.next_wait(throttled(7), "GET /x") for _ in range(4)] == [7] * 4
    with pytest.raises(Exception, match=r"GET /x: still rate limited \(429\) after waiting "
                       r"28 s in all; the API asks for 7 s more, beyond max_rate_limit_wait"):
        budget.next_wait(throttled(7), "GET /x")
    # Other failures still count against max_retries.
    failing = GTMCLIRetriableError("503")
    assert 0 <= budget.next_wait(failing, "GET /x") <= 1
    with pytest.raises(GTMCLIRetriableError):
        budget.next_wait(failing, "GET /x")


def test_a_wait_is_named_by_retry_after_else_by_a_reset_to_come():
    assert named_wait(throttled(4.0)) == 4.0
    assert named_wait(throttled(reset=time.time() + 20)) == pytest.approx(20, abs=1)
    assert named_wait(throttled(reset=time.time() - 5)) is None  # past: names no wait
    assert named_wait(throttled()) is None
    assert named_wait(GTMCLIRetriableError("503", answer(503), 4.0)) is None
    # Retry-After: 0 forever still runs the allowance out.
    budget = RetryBudget(RetryPolicy(max_rate_limit_wait=3))
    assert [budget.next_wait(throttled(0.0), "GET /x") for _ in range(3)] == [0.0] * 3
    with pytest.raises(Exception, match="max_rate_limit_wait"):
        budget.next_wait(throttled(0.0), "GET /x")


def limited_sandbox(**settings: str) -> SandboxServer:
    return SandboxServer(SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0,
                                       **settings))  # type: ignore[arg-type]


def test_a_limiter_that_keeps_answering_429_does_not_fail_the_run_within_the_wait(tmp_path):
    # A sliding log of 3 requests per 2 s, with its first four result pages refused
    # (Retry-After: 1) on top: more 429s than max_retries allows, far less wait than
    # max_rate_limit_wait.
    with limited_sandbox(rate_limit="3/2s", rate_algo="sliding") as sandbox:
        sandbox.seed_jobs("validate", 10, jobs=3)
        sandbox.add_fault_rules([{**RESULTS_RULE, "status": 429, "retry_after": "1",
                                  "count": 4}])
        run = run_tap(tmp_path, {"api_key": API_KEY, "api_url": sandbox.url,
                                 "max_retries": 0, "max_rate_limit_wait": 30})
        assert run.returncode == 0, run.stderr
        assert len(run.records("job_results")) == 30
        assert sandbox.stats()["rate_limited"] >= 4


def test_waiting_longer_than_max_rate_limit_wait_fails_naming_the_wait(sandbox, tmp_path):
    sandbox.seed_jobs("validate", 10)
    sandbox.add_fault_rules([{**RESULTS_RULE, "status": 429, "retry_after": "1", "count": 50}])
    run = run_tap(tmp_path, {"api_key": API_KEY, "api_url": sandbox.url,
                             "max_rate_limit_wait": 2})
    assert run.returncode != 0
    assert "still rate limited (429) after waiting 2 s in all" in run.stderr
    assert "beyond max_rate_limit_wait (2 s)" in run.stderr
    assert sandbox.stats()["rate_limited"] == 3  # the first try and two 1 s waits
