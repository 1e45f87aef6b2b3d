"""Which GTMCLI jobs finished since the sensor last looked, read from one job list.

The cursor is a watermark, not a list of every job seen: the latest finish moment seen
(`completed_at`, else `created_at` for a finished job without one) and the ids that
finished at exactly that moment. It stays small however many jobs the account holds.
A job is new when it is finished and its moment is later than the watermark, or equal
and its id unseen. A job reported finished with a moment older than the watermark (a
list that lags) is left to the next scheduled run, which extracts everything new anyway.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tap_gtmcli.api.client import FINISHED_STATUSES
from tap_gtmcli.api.timestamps import parse_timestamp


@dataclass(frozen=True)
class FinishedCursor:
    """The latest finish moment seen (ISO-8601 UTC) and the job ids finished then."""

    moment: str | None = None
    ids: frozenset[str] = frozenset()

    def encode(self) -> str:
        """The cursor as the sensor stores it."""
        return json.dumps({"moment": self.moment, "ids": sorted(self.ids)})

    @classmethod
    def decode(cls, text: str | None) -> FinishedCursor:
        """A stored cursor; None (a sensor's first tick) means nothing seen yet."""
        if not text:
            return cls()
        raw = json.loads(text)
        return cls(raw.get("moment"), frozenset(raw.get("ids") or ()))


def finish_moment(job: Mapping[str, Any]) -> str | None:
    """When a finished job finished, as comparable ISO-8601 UTC text; None if unknown."""
    if job.get("status") not in FINISHED_STATUSES:
        return None
    moment = parse_timestamp(job.get("completed_at")) or parse_timestamp(job.get("created_at"))
    return moment.isoformat(timespec="microseconds") if moment else None


def newly_finished(
    jobs: Iterable[Mapping[str, Any]], cursor: FinishedCursor
) -> tuple[list[str], FinishedCursor]:
    """The ids of jobs finished since `cursor`, and the cursor that includes them."""
    new: list[str] = []
    latest, latest_ids = cursor.moment, set(cursor.ids)
    for job in jobs:
        moment, job_id = finish_moment(job), str(job.get("id"))
        if moment is None:
            continue
        if cursor.moment is None or moment > cursor.moment or (
            moment == cursor.moment and job_id not in cursor.ids
        ):
            new.append(job_id)
        if latest is None or moment > latest:
            latest, latest_ids = moment, {job_id}
        elif moment == latest:
            latest_ids.add(job_id)
    return new, FinishedCursor(latest, frozenset(latest_ids))
