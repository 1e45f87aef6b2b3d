"""A job's planned status at any instant, derived from its timeline rather than stored.

Deriving status from the clock means a restarted sandbox resumes every job exactly
where wall time says it should be. The status a client sees is this plan held back by
the rows computed so far (`JobRecord.progress_at` in store.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class JobProgress:
    """Where a job stands at one instant."""

    status: str
    completed: int
    finished_at: float | None


@dataclass(frozen=True)
class JobTimeline:
    """When a job starts, progresses linearly, and completes or fails."""

    total: int
    starts_at: float
    completes_at: float
    fail_at: float | None = None
    fail_after: int | None = None

    @classmethod
    def planned(
        cls, total: int, created_at: float, start_delay: float, processing_rate: float
    ) -> JobTimeline:
        """The timeline of a job created now under the configured pace."""
        starts_at = created_at + start_delay
        instant = processing_rate <= 0 or math.isinf(processing_rate)
        duration = 0.0 if instant else total / processing_rate
        return cls(total=total, starts_at=starts_at, completes_at=starts_at + duration)

    def items_done_by(self, moment: float) -> int:
        """Items processed by a moment, ignoring failure."""
        if moment < self.starts_at:
            return 0
        if moment >= self.completes_at:
            return self.total
        share = (moment - self.starts_at) / (self.completes_at - self.starts_at)
        return min(self.total - 1, math.floor(self.total * share))

    def moment_reaching(self, items: int) -> float:
        """When processing reaches a given item count."""
        duration = self.completes_at - self.starts_at
        return self.starts_at + duration * items / self.total

    def ends_at(self) -> float:
        """When the job turns completed or failed."""
        if self.fail_at is not None:
            return min(self.fail_at, self.completes_at)
        return self.completes_at

    def progress_at(self, now: float) -> JobProgress:
        """Status, items done and finish time as seen at `now`."""
        if self.fail_at is not None and now >= self.fail_at:
            done = self.fail_after if self.fail_after is not None else self.items_done_by(now)
            return JobProgress("failed", done, self.fail_at)
        if now < self.starts_at:
            return JobProgress("pending", 0, None)
        if now >= self.completes_at:
            return JobProgress("completed", self.total, self.completes_at)
        return JobProgress("processing", self.items_done_by(now), None)
