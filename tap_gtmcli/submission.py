"""Creating one GTMCLI job per batch, exactly once when the API lets us know.

`POST /v1/jobs` has no idempotency key. When a create fails ambiguously (timeout, lost
answer, 5xx) the job may exist anyway, so before sending the batch again we look for it
in `GET /v1/jobs`: a job of the same type and item count, created since just before our
call and not already claimed by this run, is adopted instead of paying for it twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from tap_gtmcli.batches import Batch
from tap_gtmcli.client import (
    GTMCLIAmbiguousCreateError,
    GTMCLIClient,
    GTMCLIRetriesExhaustedError,
)
from tap_gtmcli.errors import GTMCLIFatalError, GTMCLIRetriableError

#: How far the server's clock may run behind ours when matching `created_at`.
CLOCK_SKEW_SECONDS = 120.0

logger = logging.getLogger("tap_gtmcli.submission")


class SubmissionFailedError(Exception):
    """A batch could not be submitted; the run must stop without releasing its STATE."""


@dataclass(frozen=True)
class SubmittedJob:
    """A job created (or adopted) for one batch."""

    job_id: str
    job_type: str
    item_count: int
    source_stream: str
    batch_sha256: str
    submitted_at: str

    def ledger_record(self) -> dict[str, object]:
        """The row of the `gtmcli_submissions` ledger stream."""
        return {
            "job_id": self.job_id,
            "job_type": self.job_type,
            "item_count": self.item_count,
            "source_stream": self.source_stream,
            "batch_sha256": self.batch_sha256,
            "submitted_at": self.submitted_at,
        }


def utc_now_iso() -> str:
    """The current time as ISO-8601 UTC with `Z`."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_created_at(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


class JobSubmitter:
    """Submits batches through one client, reconciling ambiguous creates."""

    def __init__(
        self, *, client: GTMCLIClient, webhook_url: str | None, max_resubmissions: int
    ) -> None:
        self.client = client
        self.webhook_url = webhook_url
        self.max_resubmissions = max_resubmissions
        self.known_job_ids: set[str] = set()

    def submit(self, batch: Batch) -> SubmittedJob:
        """Create the batch's job; raise `SubmissionFailedError` naming the cause."""
        payloads = batch.payloads()
        digest = Batch.sha256(payloads)
        where = f"{batch.job_type} job of {len(payloads)} items from stream {batch.source_stream!r}"
        for attempt in range(self.max_resubmissions + 1):
            try:
                job = self.client.create_job(batch.job_type, payloads, self.webhook_url)
            except GTMCLIAmbiguousCreateError as error:
                adopted = self._find_created_job(batch.job_type, len(payloads), error.started_at)
                if adopted is None:
                    logger.warning(
                        "%s; no matching job in GET /v1/jobs, so resubmitting the %s "
                        "(attempt %d of %d)",
                        error, where, attempt + 1, self.max_resubmissions + 1,
                    )
                    continue
                logger.warning(
                    "%s; adopted job %s (same type and item count, created since the "
                    "call) instead of resubmitting the %s",
                    error, adopted.get("id"), where,
                )
                job = adopted
            except (GTMCLIFatalError, GTMCLIRetriesExhaustedError, GTMCLIRetriableError) as error:
                msg = f"Submitting the {where} failed: {error}"
                raise SubmissionFailedError(msg) from error
            job_id = job.get("id")
            if not isinstance(job_id, str) or not job_id:
                msg = f"Submitting the {where}: POST /v1/jobs answered without a job id"
                raise SubmissionFailedError(msg)
            self.known_job_ids.add(job_id)
            logger.info("Submitted %s as job %s", where, job_id)
            return SubmittedJob(
                job_id=job_id,
                job_type=batch.job_type,
                item_count=len(payloads),
                source_stream=batch.source_stream,
                batch_sha256=digest,
                submitted_at=utc_now_iso(),
            )
        msg = (
            f"Submitting the {where} failed: {self.max_resubmissions + 1} attempts ended "
            "ambiguously (timeout, dropped connection or 5xx) and no created job was found"
        )
        raise SubmissionFailedError(msg)

    def _find_created_job(self, job_type: str, item_count: int, started_at: float) -> dict | None:
        """The job an ambiguous create made, if GTMCLI lists one that can only be it."""
        earliest = started_at - CLOCK_SKEW_SECONDS
        try:
            for job in self.client.list_jobs():
                created_at = _parse_created_at(job.get("created_at"))
                if created_at is not None and created_at < earliest:
                    return None  # newest first: everything further is older still
                if (
                    job.get("id") not in self.known_job_ids
                    and job.get("type") == job_type
                    and job.get("total") == item_count
                    and created_at is not None
                ):
                    return job
        except (GTMCLIFatalError, GTMCLIRetriesExhaustedError, GTMCLIRetriableError) as error:
            msg = f"Could not check whether an ambiguous job create succeeded: {error}"
            raise SubmissionFailedError(msg) from error
        return None
