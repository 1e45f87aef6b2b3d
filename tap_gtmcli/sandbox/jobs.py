"""The jobs API's operations, shared by the HTTP handler and the in-process API."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import msgspec

from tap_gtmcli.sandbox.clock import SandboxClock
from tap_gtmcli.sandbox.config import SandboxConfig
from tap_gtmcli.sandbox.errors import ApiError
from tap_gtmcli.sandbox.lifecycle import JobTimeline
from tap_gtmcli.sandbox.outcomes import JOB_TYPES, encode_rows, max_job_cost, stable_fraction
from tap_gtmcli.sandbox.payloads import MAX_JOB_ITEMS, check_items
from tap_gtmcli.sandbox.store import (
    CHUNK_ROWS,
    InsufficientCreditsError,
    JobRecord,
    JobStore,
    NewJob,
)
from tap_gtmcli.sandbox.synthetic import synthetic_items

SEED_STATUSES = ("completed", "failed", "pending")
OPERATOR_FAILURE = "Job failed by the sandbox operator"


def iso_utc(moment: float) -> str:
    """ISO-8601 UTC with a Z, to the second, as the API prints times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def new_job_id() -> str:
    """A fresh `job_` id with 12 hex characters."""
    return f"job_{secrets.token_hex(6)}"


class JobService:
    """Creates, reads, fails and deletes jobs.

    A job's status is the clock's timeline held back by the rows computed so far.
    """

    def __init__(
        self,
        config: SandboxConfig,
        store: JobStore,
        clock: SandboxClock,
        on_schedule: Callable[[JobRecord], None] = lambda record: None,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        # Called whenever a job gains (or changes) the moment it ends, for webhooks.
        self._on_schedule = on_schedule
        # Called when a job waits for the background processor.
        self._on_queued = on_queued

    def credits_balance(self) -> float:
        """Credits left: the configured grant minus every charge so far."""
        return self._config.credits - self._store.credits_spent(self._clock.now())

    def create_job(
        self, job_type: str, items: Sequence[dict[str, Any]], webhook_url: str | None = None
    ) -> dict[str, Any]:
        """Store a checked job, reserving its worst-case cost; returns the pending view.

        Jobs of up to `inline_rows` items are computed here; larger ones are stored
        with their items only and computed by the background processor.
        """
        now = self._clock.now()
        job_id = new_job_id()
        timeline = JobTimeline.planned(
            len(items), now, self._config.start_delay, self._config.processing_rate
        )
        job = self._build_job(
            job_id, job_type, items, now=now, timeline=timeline, webhook_url=webhook_url,
            charged=True, compute=len(items) <= self._config.inline_rows,
        )
        if stable_fraction("fail", job_id) < self._config.fail_job_share:
            job = self._with_planned_failure(job)
        try:
            record = self._store.insert_job(job, now, credit_limit=self._config.credits)
        except InsufficientCreditsError as error:
            raise ApiError(
                402,
                f"insufficient credits: the job may cost up to {error.cost:g},"
                f" the balance is {error.balance:g}",
            ) from None
        if record.computed_at is None:
            self._on_queued()
        self._on_schedule(record)
        return self._pending_view(record)

    def seed_jobs(
        self, job_type: str, count: int, jobs: int = 1, status: str = "completed",
        seed: str = "seed", *, ids: list[str] | None = None,
    ) -> list[str]:
        """Create `jobs` jobs of `count` generated items each, free of charge (with
        `ids`, one job per id: ids are opaque strings, any characters)."""
        if ids is not None:
            if not ids or not all(isinstance(job_id, str) and job_id for job_id in ids):
                raise ApiError(400, "'ids' must be a list of non-empty strings")
            jobs = len(ids)
        if job_type not in JOB_TYPES:
            raise ApiError(400, "'type' must be 'validate' or 'find'")
        if not 1 <= count <= MAX_JOB_ITEMS:
            raise ApiError(400, f"'count' must be between 1 and {MAX_JOB_ITEMS}")
        if not 1 <= jobs <= 1000:
            raise ApiError(400, "'jobs' must be between 1 and 1000")
        if status not in SEED_STATUSES:
            raise ApiError(400, f"'status' must be one of {', '.join(SEED_STATUSES)}")
        job_ids = []
        for ordinal in range(jobs):
            items = synthetic_items(job_type, count, f"{seed}:{job_type}:{ordinal}")
            now = self._clock.now()
            if status == "pending":
                timeline = JobTimeline.planned(
                    count, now, self._config.start_delay, self._config.processing_rate
                )
            else:
                timeline = JobTimeline(total=count, starts_at=now, completes_at=now)
            job = self._build_job(
                ids[ordinal] if ids else new_job_id(), job_type, items, now=now,
                timeline=timeline, webhook_url=None,
                charged=False, compute=True,
            )
            if status == "failed":
                job = self._with_planned_failure(job)
            record = self._store.insert_job(job, now, credit_limit=None)
            job_ids.append(record.id)
        return job_ids

    def _build_job(
        self, job_id: str, job_type: str, items: Sequence[dict[str, Any]], *, now: float,
        timeline: JobTimeline, webhook_url: str | None, charged: bool, compute: bool,
    ) -> NewJob:
        encode = msgspec.json.encode
        item_chunks = [
            encode(items[first : first + CHUNK_ROWS])
            for first in range(0, len(items), CHUNK_ROWS)
        ]
        # Rows are encoded once (here or by the processor) so serving a page joins bytes.
        results, costs = encode_rows(job_type, items) if compute else (None, None)
        return NewJob(
            id=job_id,
            type=job_type,
            created_at=now,
            timeline=timeline,
            reserve=max_job_cost(job_type, len(items)),
            charged=charged,
            item_chunks=item_chunks,
            results=results,
            row_costs=costs,
            webhook_url=webhook_url,
        )

    def _with_planned_failure(self, job: NewJob) -> NewJob:
        total = job.timeline.total
        fail_after = math.floor(stable_fraction("fail-after", job.id) * total)
        timeline = JobTimeline(
            total=total,
            starts_at=job.timeline.starts_at,
            completes_at=job.timeline.completes_at,
            fail_at=job.timeline.moment_reaching(fail_after),
            fail_after=fail_after,
        )
        # The failure's charge is known once its rows are: now, or when the processor
        # gets there.
        fail_cost = None
        if job.row_costs is not None:
            fail_cost = float(sum(job.row_costs[:fail_after]))
        elif fail_after == 0:
            fail_cost = 0.0
        return replace(
            job, timeline=timeline, fail_cost=fail_cost,
            fail_ready_at=None if fail_cost is None else job.created_at,
            error=f"Processing stopped after {fail_after} of {total} items:"
            " the verification backend is unavailable",
        )

    def get_record(self, job_id: str) -> JobRecord:
        """The stored job, or a 404."""
        record = self._store.get_job(job_id)
        if record is None:
            raise ApiError(404, f"job {job_id!r} not found")
        return record

    def job_view(self, job_id: str) -> dict[str, Any]:
        """The job object as `GET /v1/jobs/{id}` returns it."""
        return self.view_of(self.get_record(job_id), self._clock.now())

    def view_of(self, record: JobRecord, now: float) -> dict[str, Any]:
        """The job object for a record at `now`."""
        progress = record.progress_at(now)
        view: dict[str, Any] = {
            "id": record.id,
            "type": record.type,
            "status": progress.status,
            "total": record.total,
            "completed": progress.completed,
            "credits_used": None,
            "created_at": iso_utc(record.created_at),
            "completed_at": None,
        }
        if progress.status == "completed":
            view["credits_used"] = record.cost
        elif progress.status == "failed":
            view["credits_used"] = record.fail_cost or 0.0
            view["error"] = record.error or "Job failed"
        if progress.finished_at is not None:
            view["completed_at"] = iso_utc(progress.finished_at)
        return view

    def _pending_view(self, record: JobRecord) -> dict[str, Any]:
        # The create response always shows the queued job, even if it would finish at once.
        view = self.view_of(record, record.created_at)
        view.update(status="pending", completed=0, credits_used=None, completed_at=None)
        view.pop("error", None)
        return view

    def list_views(self, page: int | None = None, per_page: int = 0) -> dict[str, Any]:
        """`{"jobs": [...]}`, paginated when a page is asked for."""
        now = self._clock.now()
        if page is None:
            return {"jobs": [self.view_of(record, now) for record in self._store.list_jobs()]}
        total = self._store.count_jobs()
        records = self._store.list_jobs(offset=(page - 1) * per_page, limit=per_page)
        return {
            "jobs": [self.view_of(record, now) for record in records],
            "page": page,
            "per_page": per_page,
            "total": total,
            "total_pages": math.ceil(total / per_page),
        }

    def results_page(self, job_id: str, page: int, per_page: int) -> bytes:
        """One page of results as JSON bytes; only rows processed so far are served."""
        record = self.get_record(job_id)
        done = record.progress_at(self._clock.now()).completed
        start = (page - 1) * per_page
        stop = min(start + per_page, done)
        rows = self._store.joined_results(record.seq, start, stop)
        total_pages = math.ceil(record.total / per_page)
        return b"".join((
            b'{"results":[', rows,
            b'],"page":%d,"per_page":%d,"total":%d,"total_pages":%d}'
            % (page, per_page, record.total, total_pages),
        ))

    def job_items(self, job_id: str) -> list[dict[str, Any]]:
        """The job's items exactly as submitted."""
        record = self.get_record(job_id)
        decode = msgspec.json.decode
        return [item for chunk in self._store.items(record.seq) for item in decode(chunk)]

    def delete_job(self, job_id: str) -> bool:
        """Make a job vanish; False if there was none. Its charge stays spent."""
        record = self._store.get_job(job_id)
        if record is None:
            return False
        return self._store.delete_job(job_id, self._final_charge(record, self._clock.now()))

    def _final_charge(self, record: JobRecord, now: float) -> float:
        # What the job charges at `now`, with rows not computed yet costed here.
        if not record.charged:
            return 0.0
        if record.computed_at is not None or (
            record.fail_cost is not None and record.timeline.fail_at is not None
            and record.timeline.fail_at <= now
        ):
            return record.charge_at(now)
        costs = self._store.row_costs(record.seq, record.computed)
        first_chunk = len(costs) // CHUNK_ROWS
        for body in self._store.item_chunks(record.seq, first_chunk, 2**31):
            costs += encode_rows(record.type, msgspec.json.decode(body))[1]
        fail_at, fail_after = record.timeline.fail_at, record.timeline.fail_after
        if fail_at is not None and fail_after is not None and fail_at <= now:
            return float(sum(costs[:fail_after]))
        return float(sum(costs))

    def fail_job(self, job_id: str, error: str | None = None) -> dict[str, Any]:
        """Fail a job now (a failed job stays as it is); returns its view."""
        record = self.get_record(job_id)
        now = self._clock.now()
        progress = record.progress_at(now)
        if progress.status != "failed":
            fail_cost = self._store.cost_of_first(record.seq, progress.completed)
            self._store.mark_failed(
                job_id, now, progress.completed, fail_cost, error or OPERATOR_FAILURE
            )
            record = self.get_record(job_id)
            self._on_schedule(record)
        return self.view_of(record, now)

    def check_seed_request(self, payload: Any) -> dict[str, Any]:
        """Validate a `/_sandbox/seed` body into `seed_jobs` keyword arguments."""
        if not isinstance(payload, dict):
            raise ApiError(400, "the request body must be a JSON object")
        arguments = {
            "job_type": payload.get("type"),
            "count": payload.get("count", 100),
            "jobs": payload.get("jobs", 1),
            "status": payload.get("status", "completed"),
            "seed": str(payload.get("seed", "seed")),
            "ids": payload.get("ids"),
        }
        for name in ("count", "jobs"):
            if not isinstance(arguments[name], int) or isinstance(arguments[name], bool):
                raise ApiError(400, f"'{name}' must be an integer")
        return arguments

    @staticmethod
    def check_items(job_type: str, items: list[Any]) -> None:
        """Apply the create-job item checks to in-process submissions too."""
        if job_type not in JOB_TYPES:
            raise ApiError(400, "'type' must be 'validate' or 'find'")
        if not items or len(items) > MAX_JOB_ITEMS:
            raise ApiError(400, f"'data' must hold between 1 and {MAX_JOB_ITEMS} items")
        check_items(job_type, items)
