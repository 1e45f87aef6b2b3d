"""Creating one GTMCLI job per batch, exactly once when the API lets us know.

`POST /v1/jobs` has no idempotency key. When a create fails ambiguously (timeout, lost
answer, 5xx) the job may exist anyway, so before sending the batch again we look for it
in `GET /v1/jobs` and adopt a job that can only be that create's: same type and item
count, not listed before the call (the jobs listed before this process's first create
and at every later look are excluded, and so are the jobs it made), and created no
earlier than a second before the call in the server's clock (calibrated from `Date`).
While the server may still be working on the call, we keep looking for a grace period
before concluding that nothing was created.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import backoff
import msgspec
from backoff.types import Details

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.errors import (
    GTMCLIAmbiguousCreateError,
    GTMCLIFatalError,
    GTMCLIRetriableError,
    GTMCLIRetriesExhaustedError,
    SubmissionFailedError,
)
from tap_gtmcli.api.retry import SLEEP_IN_ON_BACKOFF, growing_pauses, poll_until
from tap_gtmcli.api.timestamps import parse_timestamp, utc_now_iso
from tap_gtmcli.submit.batches import Batch

#: How far the server's clock may run behind ours when matching `created_at`, used only
#: while no answer has carried a `Date` to calibrate against.
CLOCK_SKEW_SECONDS = 120.0
#: `created_at` has 1-second resolution: a job made by a call may show a second earlier.
CREATED_AT_RESOLUTION = 1.0
#: After an ambiguous create the server may still be working on it: look again until
#: this many request timeouts have passed since the failure.
GRACE_TIMEOUTS = 2.0
#: First and longest pause between looks during the grace period, in seconds.
FIRST_LOOK_PAUSE = 0.25
LONGEST_LOOK_PAUSE = 5.0
#: Batches handed to the background creator and not yet confirmed, at most.
MAX_IN_FLIGHT = 2

logger = logging.getLogger("tap_gtmcli.submit.job_creation")


@dataclass(frozen=True)
class SubmittedJob:
    """A job created (or adopted) for one batch."""

    job_id: str
    job_type: str
    item_count: int
    source_stream: str
    batch_sha256: str
    submitted_at: str
    #: Items of the batch not sent: submitted within `resubmit_after_days` already.
    skipped_item_count: int = 0
    #: Set when an interrupted run's create was reconciled: "adopted: ..." on the row of
    #: the job found for it, "resent: ..." on the row of the batch sending its items again.
    reconciliation: str | None = None

    def ledger_record(self) -> dict[str, object]:
        """The row of the `gtmcli_submissions` ledger stream."""
        return {
            "job_id": self.job_id,
            "job_type": self.job_type,
            "item_count": self.item_count,
            "source_stream": self.source_stream,
            "batch_sha256": self.batch_sha256,
            "submitted_at": self.submitted_at,
            "skipped_item_count": self.skipped_item_count,
            "reconciliation": self.reconciliation,
        }


def _parse_created_at(value: object) -> float | None:
    moment = parse_timestamp(value)
    return moment.timestamp() if moment is not None else None


class JobSubmitter:
    """Submits batches through one client, reconciling ambiguous creates.

    `submit_in_background` creates jobs on one worker thread, one at a time and in
    order, so reading can go on meanwhile; after a failure it creates nothing more, as
    a blocking run would have stopped there.
    """

    def __init__(
        self,
        *,
        client: GTMCLIClient,
        webhook_url: str | None,
        max_resubmissions: int,
        max_in_flight: int = MAX_IN_FLIGHT,
        request_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.webhook_url = webhook_url
        self.max_resubmissions = max_resubmissions
        self.max_in_flight = max_in_flight
        self.grace_seconds = GRACE_TIMEOUTS * request_timeout
        self._clock = clock
        self._sleep = sleep
        #: Jobs that cannot be the one an ambiguous create made: ours, and every job
        #: listed before (the snapshot taken before our first create included).
        self.known_job_ids: set[str] = set()
        self._snapshot_taken = False
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight: deque[Future[SubmittedJob]] = deque()
        self._failed = False
        #: (jobs, items) GTMCLI confirmed (created or adopted).
        self.confirmed = [0, 0]

    def submit_in_background(self, batch: Batch) -> Future[SubmittedJob]:
        """Queue the batch's create; wait first while `max_in_flight` are unconfirmed."""
        while self._in_flight and self._in_flight[0].done():
            self._in_flight.popleft()
        if len(self._in_flight) >= self.max_in_flight:
            wait([self._in_flight.popleft()])
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gtmcli-create")
        future = self._executor.submit(self._submit_unless_failed, batch)
        self._in_flight.append(future)
        return future

    def _submit_unless_failed(self, batch: Batch) -> SubmittedJob:
        if self._failed:
            msg = "Not submitted: an earlier batch failed"
            raise SubmissionFailedError(msg)
        try:
            return self.submit(batch)
        except BaseException:
            self._failed = True
            raise

    def stop_creating(self) -> None:
        """Start no further create (queued ones fail "Not submitted"); safe in a signal
        handler: it neither waits nor touches the executor."""
        self._failed = True

    def close(self) -> None:
        """Cancel creates not started yet and wait for a running one."""
        if self._executor is not None:
            self._failed = True
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def submit(self, batch: Batch) -> SubmittedJob:
        """Create the batch's job; raise `SubmissionFailedError` naming the cause."""
        payloads = batch.payloads()
        items_json = msgspec.json.encode(payloads)
        digest = hashlib.sha256(items_json).hexdigest()
        body = b'{"type":%b,"data":%b%b}' % (
            msgspec.json.encode(batch.job_type),
            items_json,
            b',"webhook_url":' + msgspec.json.encode(self.webhook_url) if self.webhook_url else b"",
        )
        del items_json
        where = f"{batch.job_type} job of {len(payloads)} items from stream {batch.source_stream!r}"
        self._take_snapshot()
        attempts = self.max_resubmissions + 1
        sent = False

        def create_or_adopt() -> dict[str, Any]:
            nonlocal sent
            if sent and self._failed:
                # Stopped (a signal, or close on a failure path): send no POST again.
                msg = f"Not submitted: the run stopped before the {where} could be resent"
                raise SubmissionFailedError(msg)
            sent = True
            self._before_send(batch, digest)
            try:
                return self.client.create_job(
                    batch.job_type, payloads, self.webhook_url, body_bytes=body
                )
            except GTMCLIAmbiguousCreateError as error:
                adopted = self._look_for_created_job(batch.job_type, len(payloads), error)
                if adopted is None:
                    raise
                logger.warning(
                    "%s; adopted job %s (same type and item count, created since the "
                    "call) instead of resubmitting the %s",
                    error, adopted.get("id"), where,
                )
                return adopted

        def log_resubmission(details: Details) -> None:
            logger.warning(
                "%s; no matching job in GET /v1/jobs, so resubmitting the %s "
                "(attempt %d of %d)",
                details["exception"], where, details["tries"] + 1, attempts,
            )

        create = backoff.on_exception(
            **SLEEP_IN_ON_BACKOFF,
            exception=GTMCLIAmbiguousCreateError,
            max_tries=attempts,
            on_backoff=log_resubmission,
            logger=None,
        )(create_or_adopt)
        try:
            job = create()
        except GTMCLIAmbiguousCreateError as error:
            msg = (
                f"Submitting the {where} failed: {attempts} attempts ended ambiguously "
                "(timeout, dropped connection or 5xx) and no created job was found; "
                f"last: {error}"
            )
            raise SubmissionFailedError(msg) from error
        except (GTMCLIFatalError, GTMCLIRetriesExhaustedError, GTMCLIRetriableError) as error:
            msg = f"Submitting the {where} failed: {error}"
            raise SubmissionFailedError(msg) from error
        job_id = job.get("id")
        if not isinstance(job_id, str) or not job_id:
            msg = f"Submitting the {where}: POST /v1/jobs answered without a job id"
            raise SubmissionFailedError(msg)
        self.known_job_ids.add(job_id)
        self.confirmed[0] += 1
        self.confirmed[1] += len(payloads)
        logger.info("Submitted %s as job %s", where, job_id)
        return SubmittedJob(
            job_id=job_id,
            job_type=batch.job_type,
            item_count=len(payloads),
            source_stream=batch.source_stream,
            batch_sha256=digest,
            submitted_at=utc_now_iso(),
        )

    def _before_send(self, batch: Batch, batch_sha256: str) -> None:
        """Called just before each `POST /v1/jobs` of the batch (a resend included)."""

    def _take_snapshot(self) -> None:
        """Before our first create, note the jobs that exist already (the newest page).

        A previous run's job may have the same type and size as a batch of ours and be
        only a second old: it must never be taken for the job of an ambiguous create.
        """
        if self._snapshot_taken:
            return
        try:
            answer = self.client.list_jobs_page(1)
        except (GTMCLIFatalError, GTMCLIRetriesExhaustedError, GTMCLIRetriableError) as error:
            msg = f"Could not list the existing jobs before the first create: {error}"
            raise SubmissionFailedError(msg) from error
        for job in answer.get("jobs") or []:
            if isinstance(job, dict) and isinstance(job.get("id"), str):
                self.known_job_ids.add(job["id"])
        self._snapshot_taken = True

    def _look_for_created_job(
        self, job_type: str, item_count: int, error: GTMCLIAmbiguousCreateError
    ) -> dict[str, Any] | None:
        """The job an ambiguous create made, looking again while it may still appear."""
        grace = 0.0 if error.api_answered else self.grace_seconds
        return poll_until(
            lambda: self._find_created_job(job_type, item_count, error.started_at),
            lambda job: job is not None,
            pauses=growing_pauses(FIRST_LOOK_PAUSE, 2, LONGEST_LOOK_PAUSE),
            deadline=self._clock() + grace,
            clock=self._clock,
            sleep=self._sleep,
        )

    def _earliest_created_at(self, started_at: float) -> float:
        """The earliest `created_at` a job made by a call started at `started_at` can show."""
        offset: float | None = getattr(self.client, "server_clock_offset", None)
        if offset is None:
            return started_at - CLOCK_SKEW_SECONDS
        return started_at + offset - CREATED_AT_RESOLUTION

    def _find_created_job(
        self, job_type: str, item_count: int, started_at: float
    ) -> dict[str, Any] | None:
        """The job an ambiguous create made, if GTMCLI lists one that can only be it.

        Every job listed and not adopted is remembered as not ours: it existed before
        any later create, so it can never be taken for that create's job either.
        """
        earliest = self._earliest_created_at(started_at)
        try:
            for job in self.client.list_jobs():
                job_id = job.get("id")
                created_at = _parse_created_at(job.get("created_at"))
                if created_at is not None and created_at < earliest:
                    return None  # newest first: everything further is older still
                if (
                    job_id not in self.known_job_ids
                    and job.get("type") == job_type
                    and job.get("total") == item_count
                    and created_at is not None
                ):
                    return job
                if isinstance(job_id, str):
                    self.known_job_ids.add(job_id)
        except (GTMCLIFatalError, GTMCLIRetriesExhaustedError, GTMCLIRetriableError) as error:
            msg = f"Could not check whether an ambiguous job create succeeded: {error}"
            raise SubmissionFailedError(msg) from error
        return None
