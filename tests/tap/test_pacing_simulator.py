"""The real Pacer against every limiter of the sandbox's zoo, on a fake clock (see
pacing_simulation.py): the same classes the sandbox answers with, so the zoo is tested
from both ends. The bars are the benchmark's: at least 85% of the budget, at most 1% of
requests answered 429, a per-minute run within 1.1x of the ideal."""

from __future__ import annotations

import math

import pytest

from tap_gtmcli.sandbox.ratelimit import RATE_ALGORITHMS, RateRule
from tap_gtmcli.tap.pacer import INITIAL_WINDOW, POLITE_CAP, SLACK
from tests.tap.pacing_simulation import EPOCH, simulate

PER_SECOND = RateRule(50, 1)
PER_MINUTE = RateRule(120, 60)
LATENCIES = [0.1, 0.3, 0.8]


def ideal_per_minute(algorithm: str, needed: int, latency: float) -> float:
    """The shortest run a client knowing the limiter could make, from its first start
    at a window's opening to its last answer."""
    rule = PER_MINUTE
    if algorithm == "token-bucket":  # the bucket's worth at once, then its refill
        return (needed - rule.requests) * rule.window_seconds / rule.requests + latency
    return rule.window_seconds + latency  # the next window (or the oldest leaving)


@pytest.mark.parametrize("latency", LATENCIES)
@pytest.mark.parametrize("algorithm", RATE_ALGORITHMS)
@pytest.mark.parametrize("needed", [401, 301], ids=["400 one-page jobs", "30 ten-page jobs"])
def test_every_limiter_per_second_gets_its_budget_without_a_429_storm(
    algorithm, latency, needed
):
    # Counted on arrival, half-way, with up to 10 ms of jitter; started mid-second.
    outcome = simulate(PER_SECOND, algorithm=algorithm, requests_needed=needed,
                       latency=latency, counted_at=0.5, start_offset=0.37)
    assert outcome.budget_share(needed, PER_SECOND) >= 0.85
    assert outcome.throttled_share <= 0.01
    assert outcome.sent == needed + outcome.throttled  # each refused one tried again


@pytest.mark.parametrize("latency", LATENCIES)
@pytest.mark.parametrize("algorithm", RATE_ALGORITHMS)
def test_every_limiter_per_minute_takes_at_most_a_tenth_over_the_ideal(algorithm, latency):
    needed = 151  # the job list and 150 one-page jobs
    outcome = simulate(PER_MINUTE, algorithm=algorithm, requests_needed=needed,
                       latency=latency, start_offset=0.2)
    assert outcome.span <= 1.1 * ideal_per_minute(algorithm, needed, latency)
    assert outcome.throttled_share <= 0.01


@pytest.mark.parametrize("counted_at", [1.0, 0.5, 0.1])
def test_a_one_second_window_is_used_whenever_requests_are_counted(counted_at):
    # Counted just before the answer (as the sandbox does), half-way, or on departure.
    outcome = simulate(PER_SECOND, requests_needed=401, latency=0.3,
                       counted_at=counted_at, start_offset=0.5)
    assert outcome.budget_share(401, PER_SECOND) >= 0.85
    assert outcome.throttled_share <= 0.01


def test_the_whole_limit_goes_at_once_once_it_is_told():
    # The first INITIAL_WINDOW requests learn the limit; the rest of the first window's
    # 50 go the moment their answers come, not spread over it.
    outcome = simulate(PER_SECOND, requests_needed=200, latency=0.1, counted_at=0.5,
                       jitter=0.0, start_offset=0.2)
    first_window = [at for at in outcome.starts if at < 0.8]  # counted before 1.0
    assert len(first_window) == 50 + outcome.throttled
    assert outcome.starts[:INITIAL_WINDOW] == [0.2] * INITIAL_WINDOW
    assert outcome.starts[INITIAL_WINDOW:50] == [pytest.approx(0.3)] * (50 - INITIAL_WINDOW)
    assert outcome.throttled <= 1  # the probe that showed the window had no room early


def test_a_sixty_second_window_is_spent_then_the_rest_goes_when_it_opens_again():
    outcome = simulate(PER_MINUTE, requests_needed=151, latency=0.3, start_offset=0.2)
    early = [at for at in outcome.starts if at < 30]
    assert len(early) == 120 + outcome.throttled  # the whole window at once (and a probe)
    late = [at for at in outcome.starts if at >= 30]
    assert 60.2 <= min(late) <= 62.5  # the next window, a second or two of slack later
    assert outcome.pacer is not None and outcome.pacer.window_seconds == 59.0


def test_a_token_bucket_per_minute_is_probed_and_followed_at_its_refill():
    outcome = simulate(PER_MINUTE, algorithm="token-bucket", requests_needed=151,
                       latency=0.3, start_offset=0.2)
    refill = outcome.starts[120:]  # after the bucket's worth
    assert len(refill) == 31 + outcome.throttled
    # Two tokens a second come back; the probes follow at the long-run gap, the log's
    # window over the limit (a little under two a second).
    gap = (60 + 1 + SLACK) / 120
    assert (refill[-1] - refill[0]) / (len(refill) - 1) == pytest.approx(gap, rel=0.05)


def test_without_limit_headers_nothing_is_paced_and_the_window_grows_to_its_cap():
    outcome = simulate(RateRule(10_000, 1), headers="none", requests_needed=400,
                       latency=0.3)
    assert outcome.throttled == 0
    assert outcome.pacer is not None and outcome.pacer.limit is None
    assert outcome.pacer.window == POLITE_CAP
    # 8, 16, then 32 a round trip: 400 requests in 14 round trips.
    assert outcome.span == pytest.approx(14 * 0.3, abs=0.15)  # (plus jitter)


@pytest.mark.parametrize("headers", ["retry-after", "none"])
def test_a_limit_told_only_by_429s_is_learned_and_the_run_completes(headers):
    # Nothing tells of the limit until a 429: the window halves on each round trip
    # that had one, and every request is read in the end.
    outcome = simulate(PER_SECOND, headers=headers, requests_needed=401, latency=0.3,
                       counted_at=0.5)
    assert outcome.sent == 401 + outcome.throttled
    assert outcome.throttled_share <= 0.25
    assert outcome.budget_share(401, PER_SECOND) >= 0.5


def test_the_simulated_limiter_is_the_sandboxs_own():
    # The run's first answer names the sandbox limiter's window: its Reset is the end of
    # the calendar second the simulated start fell in.
    outcome = simulate(PER_SECOND, requests_needed=1, latency=0.1, start_offset=0.25)
    assert outcome.pacer is not None and outcome.pacer.limit == 50
    assert math.floor(EPOCH) % 60 == 0
