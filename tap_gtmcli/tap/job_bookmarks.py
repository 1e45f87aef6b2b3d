"""Which jobs a run must emit, and the small state that lets the next run skip the rest.

GTMCLI lists jobs newest first and has no "updated since" filter, so the state records
where the previous run got to and which jobs were still unfinished there:

- `newest_created_at` / `newest_ids`: the newest job settled so far (ids break ties
  between jobs created in the same second). Anything newer is new. The bookmark never
  moves past our own clock plus CLOCK_SKEW: a job stamped ahead of our clock (a server
  clock running fast) is remembered by id in `ahead_ids` until the bookmark passes it,
  so jobs created meanwhile are still new.
- `open_jobs`: jobs that can still change, with what was emitted of them. Only these
  are looked at again, so state grows with unfinished jobs, not with history. They are
  jobs seen `pending` or `processing`; jobs whose rows did not add up (`unread`: read
  again next run); and jobs with a status we do not know, kept for UNKNOWN_STATUS_GRACE
  after first seen, then forgotten with a warning.
- `undated_ids`: finished jobs whose `created_at` is missing or unreadable. They are
  still extracted (with a warning), once: the id is what tells them apart.

A job is settled once it is emitted and, if it has results, they were extracted and
checked. Jobs are emitted oldest first and the state advances only after each one is
settled, so a STATE message written at any moment never claims results that were not
emitted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from tap_gtmcli.api.client import FINISHED_STATUSES, OPEN_STATUSES
from tap_gtmcli.api.timestamps import CLOCK_SKEW, parse_timestamp, utc_now

#: How long a job with a status this tap does not know (`cancelled`, `expired`, ...) is
#: checked again, in case the status is a stage on the way to `completed`.
UNKNOWN_STATUS_GRACE = timedelta(days=7)
_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)


def _fingerprint(job: Mapping[str, Any]) -> dict[str, Any]:
    return {"status": job.get("status"), "completed": job.get("completed")}


def job_id_of(job: Mapping[str, Any]) -> str | None:
    """The job's id as a string (ids are opaque; a number is read as its digits)."""
    job_id = job.get("id")
    if isinstance(job_id, bool) or not isinstance(job_id, str | int) or job_id == "":
        return None
    return str(job_id)


@dataclass
class JobBookmarks:
    """The decisions of one run over the job list, and the state they leave behind."""

    state: dict[str, Any]
    start_date: datetime | None = None
    job_types: frozenset[str] | None = None
    now: Callable[[], datetime] = utc_now
    _candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    _listed_open_ids: set[str] = field(default_factory=set)
    #: Jobs without a usable `created_at`, by id, for the caller's warnings.
    undated: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state.setdefault("open_jobs", {})
        self.state.setdefault("newest_ids", [])
        self._newest = parse_timestamp(self.state.get("newest_created_at"))
        open_times = [
            parse_timestamp(entry.get("created_at")) for entry in self.open_jobs.values()
        ]
        # Jobs older than this can no longer change: paging may stop once past it. An
        # open job of unknown age means the whole list must be read to find it.
        floors = [*open_times, *([self._newest] if self._newest else [])]
        self._stop_before = None if None in floors or not floors else min(
            moment for moment in floors if moment is not None
        )
        if self.start_date and (self._stop_before is None or self.start_date > self._stop_before):
            self._stop_before = self.start_date

    @property
    def open_jobs(self) -> dict[str, dict[str, Any]]:
        """Jobs that can still change, by id, as last emitted."""
        open_jobs: dict[str, dict[str, Any]] = self.state["open_jobs"]
        return open_jobs

    @property
    def waitable_ids(self) -> list[str]:
        """Open jobs still at work (pending or processing): what `wait_for_jobs` waits on."""
        return [job_id for job_id, entry in self.open_jobs.items()
                if entry.get("status") in OPEN_STATUSES]

    def is_new(self, job_id: str, created_at: datetime | None) -> bool:
        """True for a job the previous runs have not settled or seen."""
        if created_at is None:
            return job_id not in self.state.get("undated_ids", ())
        if job_id in self.state.get("ahead_ids", {}):
            return False
        if self._newest is None or created_at > self._newest:
            return True
        return created_at == self._newest and job_id not in self.state["newest_ids"]

    def observe(self, job: Mapping[str, Any]) -> bool:
        """Take one listed job into account; False once no older job can matter."""
        job_id = job_id_of(job)
        if job_id is None:
            return True
        created_at = parse_timestamp(job.get("created_at"))
        if created_at is not None:
            if self._stop_before is not None and created_at < self._stop_before:
                return False
            if self.start_date and created_at < self.start_date:
                return True
        if self.job_types is not None and job.get("type") not in self.job_types:
            return True
        if job_id in self.open_jobs:
            self._listed_open_ids.add(job_id)
            if self.has_changed(job):
                self._candidates[job_id] = {**job, "id": job_id}
        elif self.is_new(job_id, created_at):
            self._candidates[job_id] = {**job, "id": job_id}
        if created_at is None and job_id in self._candidates:
            self.undated.append(job_id)
        return True

    def has_changed(self, job: Mapping[str, Any]) -> bool:
        """True when an open job's status or progress differs from what was emitted (or
        its rows were not all read)."""
        emitted = self.open_jobs.get(str(job_id_of(job)))
        if emitted is None or emitted.get("unread"):
            return True
        return _fingerprint(job) != {key: emitted.get(key) for key in ("status", "completed")}

    def observe_all(self, jobs: Iterable[Mapping[str, Any]]) -> None:
        """Observe listed jobs until the list reaches settled history."""
        for job in jobs:
            if not self.observe(job):
                return

    def jobs_to_emit(self) -> list[dict[str, Any]]:
        """The new and changed jobs, oldest first (jobs of unknown age before all)."""

        def order(job: dict[str, Any]) -> datetime:
            return parse_timestamp(job.get("created_at")) or _EARLIEST

        # The list is newest first; reversing it before a stable sort keeps jobs created
        # in the same second in creation order.
        return sorted(reversed(self._candidates.values()), key=order)

    def vanished_open_jobs(self) -> list[str]:
        """Open jobs the list no longer shows (deleted on GTMCLI's side)."""
        return [job_id for job_id in self.open_jobs if job_id not in self._listed_open_ids]

    def forget(self, job_id: str) -> None:
        """Stop tracking a job that no longer exists."""
        self.open_jobs.pop(job_id, None)

    def expired_unknown_jobs(self) -> list[str]:
        """Jobs kept for a status we do not know whose grace is over: forget them."""
        now = self.now()
        expired = []
        for job_id, entry in self.open_jobs.items():
            first_seen = parse_timestamp(entry.get("unknown_since"))
            if first_seen is not None and now - first_seen > UNKNOWN_STATUS_GRACE:
                expired.append(job_id)
        return expired

    def keep_unread(self, job: Mapping[str, Any], reason: str) -> None:
        """Record that a job was emitted but its rows were not all read: the next run
        reads it again, whatever its status then."""
        job_id = str(job_id_of(job))
        self.open_jobs[job_id] = {"created_at": job.get("created_at"), "status": None,
                                  "completed": None, "unread": reason}
        self._advance(job_id, job)

    def settle(self, job: Mapping[str, Any]) -> None:
        """Record that a job was emitted (and its results extracted if it had some)."""
        job_id = str(job_id_of(job))
        status = job.get("status")
        finished = status in FINISHED_STATUSES or (
            status not in OPEN_STATUSES and job.get("completed_at") not in (None, "")
        )
        if finished:
            self.open_jobs.pop(job_id, None)
        else:
            entry: dict[str, Any] = {"created_at": job.get("created_at"), **_fingerprint(job)}
            if status not in OPEN_STATUSES:
                before = self.open_jobs.get(job_id, {})
                entry["unknown_since"] = before.get("unknown_since") or self.now().isoformat()
            self.open_jobs[job_id] = entry
        self._advance(job_id, job, finished=finished)

    def _advance(self, job_id: str, job: Mapping[str, Any], *, finished: bool = False) -> None:
        created_at = parse_timestamp(job.get("created_at"))
        if created_at is None:
            if finished:
                undated = self.state.setdefault("undated_ids", [])
                if job_id not in undated:
                    undated.append(job_id)
            return
        stamp = job.get("created_at")
        latest = self.now() + CLOCK_SKEW
        if created_at > latest:
            # Ahead of our clock: the bookmark stops at our clock, the job is known by id.
            self.state.setdefault("ahead_ids", {})[job_id] = stamp
            created_at, stamp = latest, latest.isoformat()
        if self._newest is None or created_at > self._newest:
            self._newest = created_at
            self.state["newest_created_at"] = stamp
            self.state["newest_ids"] = [job_id]
        elif created_at == self._newest and job_id not in self.state["newest_ids"]:
            self.state["newest_ids"].append(job_id)
        self._prune_ahead()

    def _prune_ahead(self) -> None:
        ahead = self.state.get("ahead_ids")
        if not ahead or self._newest is None:
            return
        for job_id, stamp in list(ahead.items()):
            moment = parse_timestamp(stamp)
            if moment is None or moment <= self._newest:
                del ahead[job_id]
