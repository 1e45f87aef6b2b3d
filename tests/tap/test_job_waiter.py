"""OpenJobsWaiter with an injected clock: what it hands over when, and what each check costs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.tap.job_waiter import OpenJobsWaiter, PollSchedule

LOGGER = logging.getLogger("test-job-waiter")


class FakeClock:
    """Time that moves only when the waiter sleeps or a test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class PlannedJob:
    """A job that processes `total` items evenly from 0 until `finishes_at`."""

    id: str
    total: int
    finishes_at: float
    created_at: str = "2026-11-30T10:00:00Z"
    fails: bool = False

    def view(self, now: float) -> dict[str, Any]:
        if now >= self.finishes_at:
            if self.fails:
                return {"id": self.id, "status": "failed", "total": self.total,
                        "completed": self.total // 2, "error": "mail server unreachable",
                        "created_at": self.created_at}
            return {"id": self.id, "status": "completed", "total": self.total,
                    "completed": self.total, "created_at": self.created_at}
        done = int(self.total * now / self.finishes_at)
        return {"id": self.id, "status": "processing" if done else "pending",
                "total": self.total, "completed": done, "created_at": self.created_at}


@dataclass
class FakeSource:
    """GTMCLI as the waiter sees it, counting every request."""

    clock: FakeClock
    jobs: dict[str, PlannedJob]
    #: Finished jobs listed before and after the planned ones (the rest of the account).
    newer_jobs: int = 0
    older_jobs: int = 0
    page_size: int | None = None
    job_requests: list[str] = field(default_factory=list)
    list_pages_read: int = 0
    list_checks: int = 0

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        self.job_requests.append(job_id)
        job = self.jobs.get(job_id)
        return job.view(self.clock.now) if job else None

    def list_jobs(self) -> Iterator[dict[str, Any]]:
        self.list_checks += 1
        listed = [{"id": f"job_other_{n}", "status": "completed", "total": 1, "completed": 1}
                  for n in range(self.newer_jobs)]
        listed += [job.view(self.clock.now) for job in reversed(self.jobs.values())]
        listed += [{"id": f"job_old_{n}", "status": "completed", "total": 1, "completed": 1}
                   for n in range(self.older_jobs)]
        size = self.page_size or len(listed) or 1
        for start in range(0, len(listed), size):
            self.list_pages_read += 1
            yield from listed[start:start + size]

    @property
    def requests(self) -> int:
        return len(self.job_requests) + self.list_pages_read


def make_waiter(
    source: FakeSource, clock: FakeClock, wait: float, first: float = 1.0, longest: float = 8.0
) -> OpenJobsWaiter:
    return OpenJobsWaiter(source.jobs, source=source, wait_seconds=wait,
                          schedule=PollSchedule(first, longest), logger=LOGGER,
                          clock=clock, sleep=clock.sleep)


def test_schedule_starts_short_and_backs_off_to_the_longest_pause():
    delays = PollSchedule(first=2, longest=10).delays()
    assert [next(delays) for _ in range(7)] == [2, 3, 4.5, 6.75, 10, 10, 10]
    # 2+3+4.5+6.75 = 16.25 s in 4 checks, then one every 10 s: 600 s is 63 checks.
    assert PollSchedule(first=2, longest=10).max_checks(600) == 4 + 59
    # The defaults: 5, 7.5, ... 56.95 s (7 checks, 160.9 s), then 8 more at 60 s.
    assert PollSchedule(first=5, longest=60).max_checks(600) == 15
    assert PollSchedule(first=1, longest=1).max_checks(0) == 0


@pytest.mark.parametrize(("first", "longest", "message"), [
    (0, 10, "poll_interval must be above 0 seconds, not 0"),
    (30, 10, "poll_interval_max (10 s) must not be below poll_interval (30 s)"),
])
def test_schedule_refuses_intervals_that_cannot_work(first, longest, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PollSchedule(first=first, longest=longest)


def test_each_job_is_handed_over_when_it_finishes_not_after_the_slowest():
    clock = FakeClock()
    source = FakeSource(clock, {
        "job_a": PlannedJob("job_a", 100, finishes_at=2),
        "job_b": PlannedJob("job_b", 100, finishes_at=9),
        "job_c": PlannedJob("job_c", 100, finishes_at=40),
    })
    waiter = make_waiter(source, clock, wait=120)

    handed_over = []
    for job in waiter.finished_jobs():
        handed_over.append((job["id"], job["status"], clock.now))
        clock.now += 0.5  # the caller reads and emits the job's results meanwhile

    # Checks at 1, 2.5 (A done), 5.25 (after A's 0.5 s of results), 8.875, 14.375 (B)...
    assert handed_over[0] == ("job_a", "completed", 2.5)
    assert handed_over[1][:2] == ("job_b", "completed") and handed_over[1][2] < 15
    assert handed_over[2][:2] == ("job_c", "completed") and handed_over[2][2] < 48
    assert waiter.still_open == {} and waiter.vanished == []
    assert source.requests == waiter.checks <= PollSchedule(1, 8).max_checks(120)


def test_one_request_per_check_the_list_while_several_are_open_then_the_job_itself():
    clock = FakeClock()
    source = FakeSource(clock, {
        "job_a": PlannedJob("job_a", 10, finishes_at=3),
        "job_b": PlannedJob("job_b", 10, finishes_at=3),
        "job_c": PlannedJob("job_c", 10, finishes_at=25),
    })
    waiter = make_waiter(source, clock, wait=100)

    assert [job["id"] for job in waiter.finished_jobs()] == ["job_a", "job_b", "job_c"]
    # Checks at 1, 2.5, 4.75 (A and B done: one list each), then job_c alone by id.
    assert source.list_checks == source.list_pages_read == 3
    assert source.job_requests == ["job_c"] * (waiter.checks - 3)
    assert waiter.checks == 7  # 8.125, 13.125, 21.125, 29.125 (done)


def test_time_up_leaves_the_unfinished_jobs_open_with_their_latest_progress():
    clock = FakeClock()
    source = FakeSource(clock, {
        "job_done": PlannedJob("job_done", 1000, finishes_at=4),
        "job_slow": PlannedJob("job_slow", 30_000, finishes_at=1000),
    })
    waiter = make_waiter(source, clock, wait=30, first=2, longest=10)

    assert [job["id"] for job in waiter.finished_jobs()] == ["job_done"]
    assert clock.now == 30  # the last check is at the deadline, not past it
    assert sum(clock.sleeps) == 30
    assert waiter.checks == PollSchedule(2, 10).max_checks(30) == 6
    assert list(waiter.still_open) == ["job_slow"]
    assert waiter.still_open["job_slow"]["completed"] == 900  # as seen at 30 s
    work = waiter.open_work()
    assert (work.jobs, work.items_done, work.items_total, work.items_open) == (1, 900, 30_000,
                                                                               29_100)


def test_a_job_that_fails_while_waited_for_is_handed_over_with_its_error():
    clock = FakeClock()
    source = FakeSource(clock, {
        "job_bad": PlannedJob("job_bad", 50, finishes_at=2, fails=True),
        "job_ok": PlannedJob("job_ok", 50, finishes_at=5),
    })
    finished = list(make_waiter(source, clock, wait=60).finished_jobs())
    assert [(job["id"], job["status"]) for job in finished] == [
        ("job_bad", "failed"), ("job_ok", "completed"),
    ]
    assert finished[0]["error"] == "mail server unreachable"


def test_jobs_gtmcli_no_longer_knows_are_forgotten_with_a_warning(caplog):
    clock = FakeClock()
    source = FakeSource(clock, {"job_a": PlannedJob("job_a", 5, finishes_at=50),
                                "job_b": PlannedJob("job_b", 5, finishes_at=50)})
    waiter = make_waiter(source, clock, wait=100)
    checks = waiter.finished_jobs()
    del source.jobs["job_b"]  # gone from the list: job_a is then polled alone
    assert next(checks)["id"] == "job_a"
    assert waiter.vanished == ["job_b"]
    assert "Job job_b is no longer known to GTMCLI; forgetting it" in caplog.text

    clock = FakeClock()
    source = FakeSource(clock, {"job_x": PlannedJob("job_x", 5, finishes_at=50)})
    waiter = make_waiter(source, clock, wait=100)
    del source.jobs["job_x"]  # the single-job endpoint answers 404
    assert list(waiter.finished_jobs()) == []
    assert waiter.vanished == ["job_x"] and waiter.still_open == {}
    assert source.job_requests == ["job_x"]


def test_a_paginated_list_is_read_only_down_to_the_oldest_open_job():
    def planned() -> dict[str, PlannedJob]:
        return {"job_a": PlannedJob("job_a", 5, finishes_at=1.5),
                "job_b": PlannedJob("job_b", 5, finishes_at=1.5)}

    clock = FakeClock()
    # Page 1: 3 newer jobs and job_b; page 2: job_a and 3 older; 5 more pages of history.
    source = FakeSource(clock, planned(), newer_jobs=3, older_jobs=23, page_size=4)
    waiter = make_waiter(source, clock, wait=10)
    assert [job["id"] for job in waiter.finished_jobs()] == ["job_a", "job_b"]
    assert source.list_checks == waiter.checks == 2
    assert source.list_pages_read == 2 * 2

    clock = FakeClock()
    source = FakeSource(clock, planned(), newer_jobs=10, older_jobs=500, page_size=100)
    waiter = make_waiter(source, clock, wait=10)
    assert len(list(waiter.finished_jobs())) == 2
    assert source.list_pages_read == waiter.checks == 2  # one page per check


def test_one_progress_line_per_check(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    clock = FakeClock()
    source = FakeSource(clock, {
        "job_a": PlannedJob("job_a", 10_000, finishes_at=100),
        "job_b": PlannedJob("job_b", 20_000, finishes_at=100),
    })
    waiter = make_waiter(source, clock, wait=25, first=5, longest=10)
    assert list(waiter.finished_jobs()) == []
    lines = [record.getMessage() for record in caplog.records]
    assert lines[:-1] == [
        "waiting up to 25 s for 2 jobs; first check in 5 s",
        "waiting for 2 jobs: 1,500 of 30,000 items done, next check in 7.5 s",
        "waiting for 2 jobs: 3,750 of 30,000 items done, next check in 10 s",
        "waiting for 2 jobs: 6,750 of 30,000 items done, next check in 2.5 s",
    ]
    assert lines[-1] == "stopped waiting after 25 s and 4 checks: 0 finished, 2 still open"
    assert waiter.checks == 4 and clock.now == 25


def test_no_wait_configured_or_nothing_open_costs_nothing():
    clock = FakeClock()
    source = FakeSource(clock, {"job_a": PlannedJob("job_a", 5, finishes_at=1)})
    assert list(make_waiter(source, clock, wait=0).finished_jobs()) == []
    empty = FakeSource(clock, {})
    assert list(make_waiter(empty, clock, wait=60).finished_jobs()) == []
    assert source.requests == empty.requests == 0 and clock.sleeps == []


def test_meltano_yml_settings_cost_at_most_25_checks_over_600_seconds():
    """README: "25 with `meltano.yml`'s 2 s to 30 s" (a 600 s wait_for_jobs)."""
    import yaml

    project = yaml.safe_load((Path(__file__).resolve().parents[2] / "meltano.yml").read_text())
    [tap] = [plugin for plugin in project["plugins"]["extractors"]
             if plugin["name"] == "tap-gtmcli"]
    config = tap["config"]
    assert (config["wait_for_jobs"], config["poll_interval"], config["poll_interval_max"]) == (
        600, 2, 30)
    # Pauses 2, 3, 4.5, 6.75, 10.125, 15.1875, 22.78 (64.3 s in 7 checks), then one
    # every 30 s: 18 more before 600 s.
    assert PollSchedule(first=2, longest=30).max_checks(600) == 25
    clock = FakeClock()
    source = FakeSource(clock, {"job_slow": PlannedJob("job_slow", 10, finishes_at=10_000)})
    waiter = make_waiter(source, clock, wait=600, first=2, longest=30)
    assert list(waiter.finished_jobs()) == []
    assert waiter.checks == source.requests == 25
    assert clock.now == 600


def test_a_job_found_finished_at_the_deadline_check_is_handed_over():
    """The last check is at the deadline; what it finds finished is still handed over, and
    the waiter does not cut short the caller reading its results, however long."""
    clock = FakeClock()
    source = FakeSource(clock, {
        "job_late": PlannedJob("job_late", 100, finishes_at=29),  # after the 26.25 s check
        "job_open": PlannedJob("job_open", 100, finishes_at=1000),
    })
    waiter = make_waiter(source, clock, wait=30, first=2, longest=10)
    handed_over = []
    for job in waiter.finished_jobs():
        handed_over.append((job["id"], job["status"], job["completed"], clock.now))
        clock.now += 120  # reading its results takes two minutes past the deadline
    assert handed_over == [("job_late", "completed", 100, 30)]
    assert list(waiter.still_open) == ["job_open"]
    assert waiter.checks == 6  # 2, 5, 9.5, 16.25, 26.25, 30


def test_jobs_created_after_the_list_was_read_are_not_waited_for():
    """The waiter polls the jobs open when the run read the list; a job created later is
    listed by GTMCLI but neither waited for nor handed over (it is the next run's)."""
    clock = FakeClock()
    source = FakeSource(clock, {"job_a": PlannedJob("job_a", 10, finishes_at=4),
                                "job_b": PlannedJob("job_b", 10, finishes_at=4)})
    waiter = make_waiter(source, clock, wait=100)
    # Listed with the two (several open: each check reads the list), finished first.
    source.jobs["job_new"] = PlannedJob("job_new", 10, finishes_at=2,
                                        created_at="2026-11-30T11:00:00Z")
    source.jobs["job_new_open"] = PlannedJob("job_new_open", 10, finishes_at=10_000)
    assert [job["id"] for job in waiter.finished_jobs()] == ["job_a", "job_b"]
    assert source.list_checks == waiter.checks == 3  # at 1, 2.5, 4.75
    assert waiter.still_open == {}
    assert clock.now < 10  # stopped once its own jobs finished, not at the deadline
