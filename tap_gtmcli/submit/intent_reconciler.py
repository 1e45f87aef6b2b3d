"""Which job, if any, an interrupted create made: open intents matched against GTMCLI.

A run killed after sending `POST /v1/jobs` and before recording the answer leaves an
open intent: the batch's digests, job type, item count and the moment it was sent.
GTMCLI has no idempotency key, so the next run looks in `GET /v1/jobs` for a job that
can only be that create's before paying for the batch again:

- same `type` and `total`;
- `created_at` no earlier than a second before the moment sent (GTMCLI's clock, read
  from each answer's `Date`) and no later than the time the server may have spent on
  the call (twice `request_timeout`, as for an ambiguous create within a run);
- not a job the index recorded, and a candidate of no other open intent.

A job found that way is adopted. Several candidates are told apart by their content
where GTMCLI shows it: a completed `validate` job's first result row echoes its first
email, whose digest must be the intent's first digest (`find` rows show the email
found, not the item). No candidate, or several that cannot be told apart: the batch is
sent again, and the outcome says why. While a create may still be in the server's
hands (its grace period has not passed), the search is repeated before concluding.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.errors import (
    GTMCLIFatalError,
    GTMCLIRetriableError,
    GTMCLIRetriesExhaustedError,
    SubmissionFailedError,
)
from tap_gtmcli.api.retry import growing_pauses
from tap_gtmcli.api.timestamps import parse_timestamp
from tap_gtmcli.submit.submission_index import DIGEST_BYTES, Intent

#: `created_at` has 1-second resolution: a job made by a call may show a second earlier.
CREATED_AT_RESOLUTION = 1.0
#: How far the server's clock may be from ours while no answer carried a `Date`.
CLOCK_SKEW_SECONDS = 120.0
FIRST_LOOK_PAUSE = 0.25
LONGEST_LOOK_PAUSE = 2.0

logger = logging.getLogger("tap_gtmcli.submit.intent_reconciler")

#: The digest of a job's first item as its results show it, or None when they cannot.
FirstItemDigest = Callable[[dict[str, Any]], bytes | None]


@dataclass(frozen=True)
class Outcome:
    """What became of one open intent."""

    intent: Intent
    #: The job adopted, or None: the batch is sent again.
    job_id: str | None
    #: Why, in words for the ledger's `reconciliation` column and the log.
    reason: str


class IntentReconciler:
    """Matches open intents to the jobs GTMCLI lists."""

    def __init__(
        self,
        *,
        client: GTMCLIClient,
        grace_seconds: float,
        first_item_digest: FirstItemDigest,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.grace_seconds = grace_seconds
        self.first_item_digest = first_item_digest
        self._clock = clock
        self._sleep = sleep
        #: Completed jobs' first-item digests, read once each.
        self._first_digests: dict[str, bytes | None] = {}

    def reconcile(self, intents: list[Intent], recorded_job_ids: set[str]) -> list[Outcome]:
        """An outcome per intent, looking again while a create may still surface."""
        pauses = growing_pauses(FIRST_LOOK_PAUSE, 2, LONGEST_LOOK_PAUSE)
        while True:
            outcomes = self._match(intents, recorded_job_ids)
            waiting = [
                outcome.intent.sent_at + self.grace_seconds for outcome in outcomes
                if outcome.job_id is None
            ]
            now = self._clock()
            if not waiting or max(waiting) <= now:
                return outcomes
            self._sleep(min(next(pauses), max(waiting) - now))

    def _match(self, intents: list[Intent], recorded_job_ids: set[str]) -> list[Outcome]:
        jobs = self._recent_jobs(min(intent.sent_at for intent in intents))
        alike = {
            intent.ref: [
                job for job in jobs
                if job["id"] not in recorded_job_ids and self._could_be(job, intent)
            ]
            for intent in intents
        }
        # A job whose results show another first item is not the intent's.
        candidates = {
            ref: [job for job in found if self._holds_first_item(job, intent) is not False]
            for (ref, found), intent in zip(alike.items(), intents, strict=True)
        }
        shared = Counter(job["id"] for found in candidates.values() for job in found)
        outcomes = []
        for intent in intents:
            found, similar = candidates[intent.ref], len(alike[intent.ref])
            if len(found) == 1 and shared[found[0]["id"]] == 1:
                reason = self._adopted(intent, found[0], alike=similar)
                outcomes.append(Outcome(intent, found[0]["id"], reason))
            elif not found:
                outcomes.append(Outcome(intent, None, self._none_found(intent)))
            else:
                # Same type, size and second: only the content can tell them apart.
                confirmed = [job for job in found if self._holds_first_item(job, intent)]
                if len(confirmed) == 1:
                    reason = self._adopted(intent, confirmed[0], alike=similar)
                    outcomes.append(Outcome(intent, confirmed[0]["id"], reason))
                else:
                    outcomes.append(Outcome(intent, None, self._ambiguous(intent, found)))
        return self._one_intent_per_job(outcomes)

    def _recent_jobs(self, earliest_sent: float) -> list[dict[str, Any]]:
        """The jobs listed newest first, down to the earliest any intent could have made."""
        earliest = self._window(earliest_sent)[0]
        jobs: list[dict[str, Any]] = []
        try:
            for job in self.client.list_jobs():
                created_at = _created_at(job)
                if created_at is not None and created_at < earliest:
                    break
                if isinstance(job.get("id"), str) and created_at is not None:
                    jobs.append(job)
        except (GTMCLIFatalError, GTMCLIRetriesExhaustedError, GTMCLIRetriableError) as error:
            msg = f"Could not list the jobs to reconcile an interrupted run's creates: {error}"
            raise SubmissionFailedError(msg) from error
        return jobs

    def _could_be(self, job: dict[str, Any], intent: Intent) -> bool:
        created_at = _created_at(job)
        if created_at is None or job.get("type") != intent.job_type:
            return False
        earliest, latest = self._window(intent.sent_at)
        return job.get("total") == intent.item_count and earliest <= created_at <= latest

    def _window(self, sent_at: float) -> tuple[float, float]:
        """The `created_at` range of a job made by a call sent at `sent_at` (our clock)."""
        offset: float | None = getattr(self.client, "server_clock_offset", None)
        if offset is None:
            return sent_at - CLOCK_SKEW_SECONDS, sent_at + CLOCK_SKEW_SECONDS + self.grace_seconds
        moment = sent_at + offset
        return moment - CREATED_AT_RESOLUTION, moment + self.grace_seconds + CREATED_AT_RESOLUTION

    def _holds_first_item(self, job: dict[str, Any], intent: Intent) -> bool | None:
        """Whether the job's first item is the intent's; None when its results cannot say."""
        if job.get("status") != "completed" or job.get("type") != "validate":
            return None
        if job["id"] not in self._first_digests:
            self._first_digests[job["id"]] = self.first_item_digest(job)
        first = self._first_digests[job["id"]]
        return None if first is None else first == intent.digests[:DIGEST_BYTES]

    @staticmethod
    def _one_intent_per_job(outcomes: list[Outcome]) -> list[Outcome]:
        """A job told apart by content for one intent must not be adopted by two."""
        adopted = Counter(outcome.job_id for outcome in outcomes if outcome.job_id)
        return [
            outcome if outcome.job_id is None or adopted[outcome.job_id] == 1
            else Outcome(outcome.intent, None, f"resent: job {outcome.job_id} matched "
                         "several interrupted creates")
            for outcome in outcomes
        ]

    @staticmethod
    def _adopted(intent: Intent, job: dict[str, Any], alike: int = 1) -> str:
        how = (
            f"of {alike} jobs alike, the one whose first result is the batch's first item"
            if alike > 1 else "the only job of that type and size created then"
        )
        return (
            f"adopted: the create of {intent.item_count} {intent.job_type} items sent at "
            f"{_iso(intent.sent_at)} by an interrupted run made job {job['id']} ({how})"
        )

    def _none_found(self, intent: Intent) -> str:
        return (
            f"resent: the create of {intent.item_count} {intent.job_type} items sent at "
            f"{_iso(intent.sent_at)} by an interrupted run made no job GET /v1/jobs shows "
            f"within {self.grace_seconds:g} s"
        )

    @staticmethod
    def _ambiguous(intent: Intent, found: list[dict[str, Any]]) -> str:
        ids = ", ".join(job["id"] for job in found[:5])
        return (
            f"resent: the create of {intent.item_count} {intent.job_type} items sent at "
            f"{_iso(intent.sent_at)} by an interrupted run matches {len(found)} jobs "
            f"({ids}) that nothing tells apart"
        )


def _created_at(job: dict[str, Any]) -> float | None:
    moment = parse_timestamp(job.get("created_at"))
    return moment.timestamp() if moment is not None else None


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=timezone.utc).isoformat(timespec="seconds")
