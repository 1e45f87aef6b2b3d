"""Waiting for unfinished jobs within a run: bounded, polite polling that hands over
each job the moment it finishes.

The rules it keeps:

- One request per check for all open jobs together: the single-job endpoint while one
  job is open, else the job list, read only until every open job has been seen (the
  documented list is one request; a paginated one stops at the page holding the oldest).
- Checks start `first` seconds apart and each waits 1.5 times longer, up to `longest`:
  a long wait costs few requests, at most `PollSchedule.max_checks(wait)`.
- A job is handed over as soon as a check sees it completed or failed, never after the
  slowest one; the caller emits and settles it before the next check.
- The deadline bounds when checks happen, not work already begun: the last check is at
  the deadline, a job it finds finished is still handed over, and what is open then is
  reported (`still_open`), never failed.

No SDK here: the caller passes how to read jobs, and the clock and sleep to use. The
pauses are `api.retry.growing_pauses`, as every polling loop's; the loop is not
`poll_until`, because each finished job goes back to the caller between two checks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tap_gtmcli.api.client import FINISHED_STATUSES
from tap_gtmcli.api.retry import growing_pauses
from tap_gtmcli.api.timestamps import parse_timestamp

BACKOFF_FACTOR = 1.5
DEFAULT_POLL_INTERVAL = 5
DEFAULT_POLL_INTERVAL_MAX = 60

Job = dict[str, Any]


class JobSource(Protocol):
    """How the waiter reads jobs (each call is one request, or lazily paged)."""

    def get_job(self, job_id: str) -> Mapping[str, Any] | None:
        """The job object, or None when GTMCLI no longer has it (404)."""

    def list_jobs(self) -> Iterable[Mapping[str, Any]]:
        """The job list, newest first; further pages are read only as iterated."""


@dataclass(frozen=True)
class PollSchedule:
    """Seconds between checks: `first`, then 1.5 times longer each time, up to `longest`."""

    first: float
    longest: float

    def __post_init__(self) -> None:
        if not self.first > 0:
            raise ValueError(f"poll_interval must be above 0 seconds, not {self.first}")
        if self.longest < self.first:
            raise ValueError(
                f"poll_interval_max ({self.longest:g} s) must not be below poll_interval "
                f"({self.first:g} s)"
            )

    @classmethod
    def from_settings(cls, config: Mapping[str, Any]) -> PollSchedule:
        """The schedule of the `poll_interval` and `poll_interval_max` settings."""
        return cls(
            first=float(config.get("poll_interval", DEFAULT_POLL_INTERVAL)),
            longest=float(config.get("poll_interval_max", DEFAULT_POLL_INTERVAL_MAX)),
        )

    def delays(self) -> Iterator[float]:
        """The pause before each check, endlessly."""
        return growing_pauses(self.first, BACKOFF_FACTOR, self.longest)

    def max_checks(self, wait: float) -> int:
        """The most checks (so requests, with the documented list) a wait can cost."""
        elapsed = 0.0
        for checks, delay in enumerate(self.delays()):
            if elapsed >= wait:
                return checks
            elapsed += delay
        raise AssertionError("unreachable: delays() never ends")


@dataclass(frozen=True)
class OpenWork:
    """What the still-unfinished jobs hold, as last seen."""

    jobs: int
    items_done: int
    items_total: int

    @property
    def items_open(self) -> int:
        """Items not processed yet."""
        return max(self.items_total - self.items_done, 0)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _creation_order(job: Mapping[str, Any]) -> str:
    moment = parse_timestamp(job.get("created_at"))
    return moment.isoformat() if moment else ""


class OpenJobsWaiter:
    """Polls a fixed set of open jobs until each finishes or the time is up."""

    def __init__(
        self,
        open_ids: Iterable[str],
        *,
        source: JobSource,
        wait_seconds: float,
        schedule: PollSchedule,
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        #: Open job id -> the job as last seen (None until a check has seen it).
        self.still_open: dict[str, Job | None] = dict.fromkeys(open_ids)
        self.vanished: list[str] = []
        self.checks = 0
        self.finished = 0
        self._source = source
        self._wait_seconds = wait_seconds
        self._schedule = schedule
        self._logger = logger
        self._clock = clock
        self._sleep = sleep

    def finished_jobs(self) -> Iterator[Job]:
        """Each job once it is completed or failed, as soon as a check sees it."""
        if not self.still_open or self._wait_seconds <= 0:
            return
        started = self._clock()
        deadline = started + self._wait_seconds
        delays = self._schedule.delays()
        delay = min(next(delays), self._wait_seconds)
        self._logger.info(
            "waiting up to %s s for %s; first check in %s s",
            _seconds(self._wait_seconds), counted(len(self.still_open), "job"), _seconds(delay),
        )
        while True:
            self._sleep(delay)
            yield from self._check()
            remaining = deadline - self._clock()
            if not self.still_open or remaining <= 0:
                break
            delay = min(next(delays), remaining)
            work = self.open_work()
            self._logger.info(
                "waiting for %s: %s of %s items done, next check in %s s",
                counted(work.jobs, "job"), f"{work.items_done:,}", f"{work.items_total:,}",
                _seconds(delay),
            )
        self._logger.info(
            "stopped waiting after %s s and %s: %d finished, %d still open",
            _seconds(self._clock() - started), counted(self.checks, "check"), self.finished,
            len(self.still_open),
        )

    def open_work(self) -> OpenWork:
        """Jobs and items still unfinished, from the latest check."""
        seen = [job for job in self.still_open.values() if job is not None]
        return OpenWork(
            jobs=len(self.still_open),
            items_done=sum(_count(job.get("completed")) for job in seen),
            items_total=sum(_count(job.get("total")) for job in seen),
        )

    def _check(self) -> Iterator[Job]:
        views = self._read_open_jobs()
        self.checks += 1
        finished: list[Job] = []
        for job_id in list(self.still_open):
            view = views.get(job_id)
            if view is None:
                del self.still_open[job_id]
                self.vanished.append(job_id)
                self._logger.warning(
                    "Job %s is no longer known to GTMCLI; forgetting it", job_id
                )
            elif view.get("status") in FINISHED_STATUSES:
                del self.still_open[job_id]
                finished.append(view)
            else:
                self.still_open[job_id] = view
        self.finished += len(finished)
        yield from sorted(finished, key=_creation_order)

    def _read_open_jobs(self) -> dict[str, Job]:
        wanted = set(self.still_open)
        if len(wanted) == 1:
            (only_id,) = wanted
            job = self._source.get_job(only_id)
            return {only_id: {**job, "id": only_id}} if job is not None else {}
        views: dict[str, Job] = {}
        for listed in self._source.list_jobs():
            job_id = listed.get("id")
            if isinstance(job_id, str) and job_id in wanted:
                views[job_id] = dict(listed)
                if len(views) == len(wanted):
                    break  # stops a paginated list from reading further pages
        return views


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def counted(count: int, noun: str) -> str:
    """A count in words: "1 job", "3 jobs"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
