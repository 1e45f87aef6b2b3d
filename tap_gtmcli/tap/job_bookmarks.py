"""Which jobs a run must emit, and the small state that lets the next run skip the rest.

GTMCLI lists jobs newest first and has no "updated since" filter, so the state records
where the previous run got to and which jobs were still unfinished there:

- `newest_created_at` / `newest_ids`: the newest job settled so far (ids break ties
  between jobs created in the same second). Anything newer is new.
- `open_jobs`: jobs seen pending or processing, with the status and progress emitted.
  Only these can still change, so state grows with unfinished jobs, not with history.

A job is settled once it is emitted and, if completed, its results are extracted. Jobs
are emitted oldest first and the state advances only after each one is settled, so a
STATE message written at any moment never claims results that were not emitted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tap_gtmcli.api.client import FINISHED_STATUSES
from tap_gtmcli.api.timestamps import parse_timestamp


def _fingerprint(job: Mapping[str, Any]) -> dict[str, Any]:
    return {"status": job.get("status"), "completed": job.get("completed")}


@dataclass
class JobBookmarks:
    """The decisions of one run over the job list, and the state they leave behind."""

    state: dict[str, Any]
    start_date: datetime | None = None
    job_types: frozenset[str] | None = None
    _candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    _listed_open_ids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.state.setdefault("open_jobs", {})
        self.state.setdefault("newest_ids", [])
        self._newest = parse_timestamp(self.state.get("newest_created_at"))
        open_times = [
            parse_timestamp(entry.get("created_at")) for entry in self.open_jobs.values()
        ]
        known_open = [moment for moment in open_times if moment is not None]
        # Jobs older than this can no longer change: paging may stop once past it.
        floors = [*known_open, *([self._newest] if self._newest else [])]
        self._stop_before = min(floors) if floors else None
        if self.start_date and (self._stop_before is None or self.start_date > self._stop_before):
            self._stop_before = self.start_date

    @property
    def open_jobs(self) -> dict[str, dict[str, Any]]:
        """Unfinished jobs by id, as last emitted."""
        open_jobs: dict[str, dict[str, Any]] = self.state["open_jobs"]
        return open_jobs

    def is_new(self, job_id: str, created_at: datetime) -> bool:
        """True for a job the previous runs have not settled or seen."""
        if self._newest is None or created_at > self._newest:
            return True
        return created_at == self._newest and job_id not in self.state["newest_ids"]

    def observe(self, job: Mapping[str, Any]) -> bool:
        """Take one listed job into account; False once no older job can matter."""
        job_id = job.get("id")
        created_at = parse_timestamp(job.get("created_at"))
        if not isinstance(job_id, str) or created_at is None:
            return True
        if self._stop_before is not None and created_at < self._stop_before:
            return False
        if self.start_date and created_at < self.start_date:
            return True
        if self.job_types is not None and job.get("type") not in self.job_types:
            return True
        if job_id in self.open_jobs:
            self._listed_open_ids.add(job_id)
            if self.has_changed(job):
                self._candidates[job_id] = dict(job)
        elif self.is_new(job_id, created_at):
            self._candidates[job_id] = dict(job)
        return True

    def has_changed(self, job: Mapping[str, Any]) -> bool:
        """True when an open job's status or progress differs from what was emitted."""
        emitted = self.open_jobs.get(str(job.get("id")))
        if emitted is None:
            return True
        return _fingerprint(job) != {key: emitted.get(key) for key in ("status", "completed")}

    def observe_all(self, jobs: Iterable[Mapping[str, Any]]) -> None:
        """Observe listed jobs until the list reaches settled history."""
        for job in jobs:
            if not self.observe(job):
                return

    def jobs_to_emit(self) -> list[dict[str, Any]]:
        """The new and changed jobs, oldest first."""

        def order(job: dict[str, Any]) -> datetime:
            return parse_timestamp(job.get("created_at")) or datetime.min.replace(
                tzinfo=timezone.utc
            )

        # The list is newest first; reversing it before a stable sort keeps jobs created
        # in the same second in creation order.
        return sorted(reversed(self._candidates.values()), key=order)

    def vanished_open_jobs(self) -> list[str]:
        """Open jobs the list no longer shows (deleted on GTMCLI's side)."""
        return [job_id for job_id in self.open_jobs if job_id not in self._listed_open_ids]

    def forget(self, job_id: str) -> None:
        """Stop tracking a job that no longer exists."""
        self.open_jobs.pop(job_id, None)

    def settle(self, job: Mapping[str, Any]) -> None:
        """Record that a job was emitted (and its results extracted if completed)."""
        job_id = str(job["id"])
        created_at = parse_timestamp(job.get("created_at"))
        if job.get("status") in FINISHED_STATUSES:
            self.open_jobs.pop(job_id, None)
        else:
            self.open_jobs[job_id] = {"created_at": job.get("created_at"), **_fingerprint(job)}
        if created_at is None:
            return
        if self._newest is None or created_at > self._newest:
            self._newest = created_at
            self.state["newest_created_at"] = job.get("created_at")
            self.state["newest_ids"] = [job_id]
        elif created_at == self._newest and job_id not in self.state["newest_ids"]:
            self.state["newest_ids"].append(job_id)
