"""When to try a request again: `Retry-After` exactly when the API gives it, else
exponential backoff with full jitter. A 429 that names its wait (`Retry-After`, else
`X-RateLimit-Reset`) is waited out for up to `max_rate_limit_wait` seconds in all, and
does not count against `max_retries`: a rate limit is no failure (see `RetryBudget`).

Shared by the tap's streams and the mapper's client; every retry and polling loop runs
on `backoff`, sleeping in its `on_backoff` handler (see SLEEP_IN_ON_BACKOFF) so that a
test can record the waits and a stopping run can cut them short.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import backoff
import requests
from backoff.types import Details

from tap_gtmcli.api.errors import (
    GTMCLICancelledError,
    GTMCLIRetriableError,
    GTMCLIRetriesExhaustedError,
)

Answer = TypeVar("Answer")

#: The transport failures worth another try (the API may never have seen the request,
#: or its answer was lost on the way).
TRANSIENT_EXCEPTIONS: tuple[type[Exception], ...] = (
    GTMCLIRetriableError,
    ConnectionResetError,
    requests.exceptions.Timeout,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


#: Arguments that make a `backoff` loop wait 0 between tries. `backoff` sleeps with
#: `time.sleep`, which a test cannot replace, so our loops sleep in their `on_backoff`
#: handler instead, through an injected sleep, for the wait their policy computes.
SLEEP_IN_ON_BACKOFF: dict[str, Any] = {"wait_gen": backoff.constant, "interval": 0, "jitter": None}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry, and how long to wait between tries."""

    max_retries: int = 5
    base_seconds: float = 1.0
    max_seconds: float = 60.0
    #: Seconds of 429s that name their wait that one request waits out in all.
    max_rate_limit_wait: float = 300.0

    @property
    def max_tries(self) -> int:
        """Total attempts: the first one plus the retries."""
        return self.max_retries + 1

    def wait_seconds(self, retry_number: int, error: BaseException | None) -> float:
        """The wait before retry `retry_number` (1-based) after `error`."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** (retry_number - 1))
        # Full jitter: spreads the retries of many workers instead of synchronising them.
        return random.uniform(0, ceiling)


#: What each named wait counts for at least: a server that keeps answering
#: `Retry-After: 0` still runs the allowance out.
SHORTEST_NAMED_WAIT = 1.0


def named_wait(error: BaseException | None) -> float | None:
    """The seconds a 429 says to wait (`Retry-After`, else `X-RateLimit-Reset` less now);
    None for any other error, or a 429 that names no wait to come."""
    if not isinstance(error, GTMCLIRetriableError) or error.status != 429:
        return None
    if error.retry_after is not None:
        return error.retry_after
    response = error.response
    reset = response.headers.get("X-RateLimit-Reset") if response is not None else None
    try:
        left = float(reset) - time.time() if reset is not None else None
    except ValueError:
        return None
    return left if left is not None and left > 0 else None


@dataclass
class RetryBudget:
    """The retries left to one request: `max_retries` failures, and `max_rate_limit_wait`
    seconds of 429s that name their wait."""

    policy: RetryPolicy
    failures: int = 0
    rate_limit_waited: float = 0.0
    #: Whether the last wait was the one a 429 named (the retry has waited it out).
    waited_out: bool = False
    #: Whether a try failed already (the next one is a retry).
    retried: bool = False

    def next_wait(self, error: BaseException, what: str) -> float:
        """Seconds to wait before trying `what` again after `error`; raises when the
        budget is spent (`error` itself once `max_retries` failures are spent)."""
        wait = named_wait(error)
        self.waited_out = wait is not None
        self.retried = True
        if wait is None:
            self.failures += 1
            if self.failures > self.policy.max_retries:
                raise error
            return self.policy.wait_seconds(self.failures, error)
        allowed = self.policy.max_rate_limit_wait
        if self.rate_limit_waited + max(wait, SHORTEST_NAMED_WAIT) > allowed:
            raise GTMCLIRetriesExhaustedError(
                f"{what}: still rate limited (429) after waiting {self.rate_limit_waited:.0f} s"
                f" in all; the API asks for {wait:.0f} s more, beyond max_rate_limit_wait "
                f"({allowed:g} s)"
            ) from error
        self.rate_limit_waited += max(wait, SHORTEST_NAMED_WAIT)
        return wait


def raise_if_stopped(stop: threading.Event | None, what: str) -> None:
    """Raise `GTMCLICancelledError` naming `what` when `stop` is set."""
    if stop is not None and stop.is_set():
        raise GTMCLICancelledError(f"{what} not sent: the run is stopping")


def sleep_unless_stopped(seconds: float, stop: threading.Event | None, what: str) -> None:
    """Sleep `seconds` before another try of `what`; with a `stop`, wake the moment it is
    set and raise `GTMCLICancelledError` instead of trying again."""
    if stop is None:
        time.sleep(seconds)
        return
    stop.wait(seconds)
    raise_if_stopped(stop, what)


def growing_pauses(first: float, factor: float, longest: float) -> Iterator[float]:
    """`first`, then `factor` times the pause before, up to `longest`."""
    pauses = backoff.expo(base=factor, factor=first, max_value=longest)
    next(pauses)  # backoff's wait generators yield 0 first, for priming
    return pauses


def poll_until(
    call: Callable[[], Answer],
    done: Callable[[Answer], bool],
    *,
    pauses: Iterator[float],
    deadline: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Answer:
    """Call until an answer is `done` or `clock` reaches `deadline`; return the last answer.

    Each pause is the next of `pauses`, shortened so no sleep runs past the deadline.
    """

    def pause(_details: Details) -> None:
        sleep(min(next(pauses), max(0.0, deadline - clock())))

    poll = backoff.on_predicate(
        **SLEEP_IN_ON_BACKOFF,
        predicate=lambda answer: not done(answer) and clock() < deadline,
        on_backoff=pause,
        logger=None,
    )(call)
    return poll()
