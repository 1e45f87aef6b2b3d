"""A run of requests through the real `Pacer` against one of the sandbox's limiters, on a
fake clock: each request is counted by the limiter `delay` after it starts and answered
just after; a refused one is tried again after its `Retry-After` (as the retry policy
does), holding its place in the in-flight window meanwhile."""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

import requests
from requests.structures import CaseInsensitiveDict

from tap_gtmcli.api.errors import GTMCLIRetriableError
from tap_gtmcli.api.retry import RetryPolicy, parse_retry_after
from tap_gtmcli.sandbox.ratelimit import RateLimiter, RateRule
from tap_gtmcli.tap.pacer import Pacer

#: Unix time of the simulation's start: a multiple of 60, so calendar windows line up.
EPOCH = 1_767_225_600.0
KEY = "key"


@dataclass
class Outcome:
    """What a simulated run did."""

    sent: int = 0
    throttled: int = 0
    first_start: float | None = None
    last_answer: float = 0.0
    starts: list[float] = field(default_factory=list)
    pacer: Pacer | None = None

    @property
    def span(self) -> float:
        return self.last_answer - (self.first_start or 0.0)

    @property
    def throttled_share(self) -> float:
        return self.throttled / max(1, self.sent)

    def budget_share(self, needed: int, rule: RateRule) -> float:
        """Requests needed over what the limit allows in the span (as the benchmark)."""
        return needed / (rule.requests / rule.window_seconds * self.span)


def _response(status: int, headers: dict[str, str]) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers = CaseInsensitiveDict(headers)
    return response


def simulate(
    rule: RateRule,
    *,
    algorithm: str = "grid",
    headers: str = "all",
    requests_needed: int,
    latency: float,
    counted_at: float = 1.0,
    jitter: float = 0.01,
    start_offset: float = 0.0,
    seed: int = 0,
    max_in_flight: int | None = None,
    horizon: float = 3600.0,
) -> Outcome:
    """Send `requests_needed` requests through a real Pacer; each is counted
    `counted_at` x `latency` (plus up to `jitter` s) after it starts, and answered
    `latency` after it starts (or when counted, if later)."""
    limiter = RateLimiter(rule, algorithm=algorithm, headers=headers)
    rng = random.Random(seed)
    now = start_offset
    events: list[tuple[float, int, int, int, dict[str, str]]] = []
    order = itertools.count()
    outcome = Outcome()
    policy = RetryPolicy(max_retries=1000)
    retries: list[float] = []  # when each refused request is tried again

    def deliver(until: float) -> None:
        nonlocal now
        while events and events[0][0] <= until:
            at, _, ticket, status, told = heapq.heappop(events)
            now = max(now, at)
            response = _response(status, told)
            pacer.observe(ticket, response)
            outcome.last_answer = now
            if status == 429:
                outcome.throttled += 1
                error = GTMCLIRetriableError(
                    "429", response, parse_retry_after(told.get("Retry-After")))
                heapq.heappush(retries, now + policy.wait_seconds(1, error))
        now = max(now, until)

    def nap(seconds: float) -> None:
        target = now + max(seconds, 1e-6)
        deliver(min(target, events[0][0]) if events else target)

    pacer = Pacer(max_in_flight=max_in_flight, clock=lambda: now,
                  wall_clock=lambda: EPOCH + now, nap=nap)
    outcome.pacer = pacer
    fresh = requests_needed
    while fresh or events or retries:
        if now > horizon:
            raise AssertionError(f"the run took more than {horizon} s")
        ready_retries = bool(retries) and retries[0] <= now
        in_flight = len(events) + len(retries)
        # A refused request is tried again whatever the window: its place is its own.
        if ready_retries or (fresh and in_flight < pacer.window):
            if ready_retries:
                heapq.heappop(retries)
            else:
                fresh -= 1
            ticket = pacer.acquire()
            outcome.sent += 1
            outcome.first_start = now if outcome.first_start is None else outcome.first_start
            outcome.starts.append(now)
            arrival = now + counted_at * latency + rng.uniform(0, jitter)
            decision = limiter.check(KEY, EPOCH + arrival)
            heapq.heappush(events, (max(arrival, now + latency), next(order), ticket,
                                    200 if decision.allowed else 429, decision.headers))
            continue
        deliver(min([*(events[:1] and [events[0][0]]), *retries[:1]]))
    return outcome
