"""The tap's streams: `jobs` (incremental by job state) and its child `job_results`."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import requests
from singer_sdk import metrics
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.helpers.types import Context, Record
from singer_sdk.mapper import SameRecordTransform
from typing_extensions import override

from tap_gtmcli.api.errors import (
    GTMCLIFatalError,
    GTMCLINotFoundError,
    decode_json,
    describe_request,
)
from tap_gtmcli.api.paths import job_path
from tap_gtmcli.api.timestamps import parse_timestamp
from tap_gtmcli.tap.client import GTMCLIStream
from tap_gtmcli.tap.job_bookmarks import UNKNOWN_STATUS_GRACE, JobBookmarks, job_id_of
from tap_gtmcli.tap.job_rows import (
    JobRowsMismatchError,
    JobRowsTally,
    JobsNotReadError,
    PageCheck,
    expected_rows,
)
from tap_gtmcli.tap.job_waiter import OpenJobsWaiter, PollSchedule, counted
from tap_gtmcli.tap.message_writer import TapMessageWriter
from tap_gtmcli.tap.page_pipeline import PagePipeline
from tap_gtmcli.tap.pagination import JobListPaginator
from tap_gtmcli.tap.record_lines import RecordLineBuilder
from tap_gtmcli.tap.result_pages import ResultPage, parse_results_page
from tap_gtmcli.tap.schema_fit import EXTRA_FIELDS

MAX_RESULTS_PER_PAGE = 1000
PageRequest = tuple[int, requests.PreparedRequest, Context]
PROGRESS_LOG_SECONDS = 5.0
#: Pages wait only while the writer is the slow part, or behind a late page; 4 MB is
#: about 16 pages of 1,000 rows.
DEFAULT_READ_AHEAD_MB = 4


class JobsStream(GTMCLIStream):
    """GET /v1/jobs: every job once, then again each time its status changes."""

    name = "jobs"
    path = "/v1/jobs"
    primary_keys = ("id",)
    replication_key = "created_at"
    # Jobs are emitted oldest first, so the SDK's own bookmark (informational: the
    # incremental decisions live in JobBookmarks) is resumable; re-emitted unfinished
    # jobs are older than the previous bookmark, hence no sort check.
    is_sorted = True
    check_sorted = False
    records_key = "jobs"

    @override
    def get_url_params(
        self, context: Context | None, next_page_token: int | None
    ) -> dict[str, Any]:
        # The documented list takes no parameters; ask for page 2+ only when paged.
        return {"page": next_page_token} if next_page_token and next_page_token > 1 else {}

    @cached_property
    def bookmarks(self) -> JobBookmarks:
        """This run's view of the job list, backed by the stream's state."""
        job_types = self.config.get("job_types")
        return JobBookmarks(
            state=self.stream_state,
            start_date=parse_timestamp(self.config.get("start_date")),
            job_types=frozenset(job_types) if job_types else None,
        )

    @override
    def get_new_paginator(self) -> JobListPaginator:
        return JobListPaginator(self.logger)

    @override
    def parse_response(self, response: requests.Response) -> Iterable[dict[str, Any]]:
        body = decode_json(response)
        jobs = body.get("jobs")
        if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
            shape = ("no `jobs` array" if "jobs" not in body else
                     f"`jobs` as {type(jobs).__name__}" if not isinstance(jobs, list) else
                     "`jobs` holding something other than job objects")
            raise GTMCLIFatalError(
                f"{describe_request(response)} answered {shape} (keys: "
                f"{', '.join(sorted(body)[:8]) or 'none'}); nothing is extracted and the "
                "state is not advanced"
            )
        return jobs

    @override
    def post_process(self, row: Record, context: Context | None = None) -> Record | None:
        created = row.setdefault("created_at", None)
        if created is None or isinstance(created, str):
            return self.fold_unknown_fields(row)
        # Epoch seconds as a number: the column gets it as ISO 8601, the value as sent
        # is kept beside it.
        moment = parse_timestamp(created)
        row["created_at"] = moment.isoformat().replace("+00:00", "Z") if moment else None
        record = self.fold_unknown_fields(row)
        record[EXTRA_FIELDS] = {**(record.get(EXTRA_FIELDS) or {}), "created_at": created}
        return record

    @cached_property
    def unread(self) -> dict[str, str]:
        """Jobs of this run whose rows did not add up, with what was wrong."""
        return {}

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        bookmarks = self.bookmarks
        # Breaking out of the listing stops paging: older jobs cannot have changed.
        bookmarks.observe_all(self._listed_jobs(context))
        for job_id in bookmarks.vanished_open_jobs():
            self.logger.warning("Job %s is no longer listed by GTMCLI; forgetting it", job_id)
            bookmarks.forget(job_id)
        for job_id in bookmarks.expired_unknown_jobs():
            self.logger.warning(
                "Job %s has kept a status this tap does not know for over %d days; "
                "forgetting it", job_id, UNKNOWN_STATUS_GRACE.days)
            bookmarks.forget(job_id)
        for job_id in bookmarks.undated:
            self.logger.warning(
                "Job %s has no readable created_at; it is extracted all the same, and "
                "remembered by id", job_id)
        to_emit = bookmarks.jobs_to_emit()
        self.logger.info("%d new or changed jobs to emit", len(to_emit))
        with self._results_read_ahead(to_emit):
            for job in to_emit:
                self.check_not_stopped()
                self._note_refused_results(job)
                yield job
                # Reached only after the SDK has synced this job's results.
                self._settle(job)
            yield from self._wait_for_open_jobs(bookmarks)
        if self.unread:
            raise JobsNotReadError(self.unread)

    def _listed_jobs(self, context: Context | None) -> Iterator[dict[str, Any]]:
        for job in self.request_records(context):
            if job_id_of(job) is None:
                raise GTMCLIFatalError(
                    f"GET {self.path} listed a job without a usable id "
                    f"({type(job.get('id')).__name__}); nothing is extracted and the state "
                    "is not advanced")
            yield job

    def _note_refused_results(self, job: dict[str, Any]) -> None:
        """A failed job's processed rows are charged: read them if GTMCLI serves them,
        else say on the job's row why not."""
        job.setdefault("results_error", None)
        if job.get("status") != "failed" or not expected_rows(job):
            return
        reader = self._results_reader
        if reader is None:
            return
        refusal = reader.refusal(job)
        if refusal is not None:
            job["results_error"] = refusal
            self.logger.warning("Results of failed job %s not read: %s", job["id"], refusal)

    @property
    def _results_reader(self) -> JobResultsStream | None:
        for child in self.child_streams:
            if isinstance(child, JobResultsStream) and child.selected:
                return child
        return None

    @contextmanager
    def _results_read_ahead(self, jobs: list[dict[str, Any]]) -> Iterator[None]:
        """Let `job_results` request the result pages of these jobs ahead, in order."""
        readers = [child for child in self.child_streams
                   if isinstance(child, JobResultsStream) and child.selected]
        for reader in readers:
            reader.read_ahead([context for job in jobs
                               if (context := self.get_child_context(job, None))])
        try:
            yield
        finally:
            for reader in readers:
                reader.stop_reading_ahead()

    def _settle(self, job: dict[str, Any]) -> None:
        problem = self.unread.get(str(job["id"]))

        def settle() -> None:
            if problem is None:
                self.bookmarks.settle(job)
            else:
                self.bookmarks.keep_unread(job, problem)

        spool = self.batch_spool
        if spool is not None:
            # BATCH mode: the job's rows may still be in open files; its bookmark moves
            # once they are announced.
            spool.job_done(settle)
            return
        settle()
        self._checkpoint()

    def _wait_for_open_jobs(self, bookmarks: JobBookmarks) -> Iterator[dict[str, Any]]:
        """With `wait_for_jobs`, emit each open job the moment it finishes (job_waiter)."""
        if self.batch_spool is not None:
            # The waiter reads the open jobs from the bookmarks, so every settle must be
            # applied first; and what is extracted reaches the target before a long wait.
            self.batch_spool.flush()
        waiter = OpenJobsWaiter(
            bookmarks.waitable_ids, source=self, logger=self.logger,
            wait_seconds=float(self.config.get("wait_for_jobs") or 0),
            schedule=PollSchedule.from_settings(self.config),
            sleep=self._interruptible_sleep,
        )
        for job in waiter.finished_jobs():
            yield job
            self._settle(job)
        for job_id in waiter.vanished:
            bookmarks.forget(job_id)
        if waiter.checks == 0 or not waiter.still_open:
            return
        for latest in waiter.still_open.values():
            if latest is not None and bookmarks.has_changed(latest):
                yield latest  # its latest progress, so the warehouse shows where it stands
                self._settle(latest)
        work = waiter.open_work()
        self.logger.warning(
            "wait_for_jobs (%s s) is up with %s still unfinished, %s of %s items not yet "
            "processed; they stay open in state and the next run picks them up",
            self.config.get("wait_for_jobs"), counted(work.jobs, "job"), f"{work.items_open:,}",
            f"{work.items_total:,}",
        )

    def _interruptible_sleep(self, seconds: float) -> None:
        with self.interruptible():
            time.sleep(seconds)

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """GET /v1/jobs/{id} under the API policy; None when GTMCLI answers 404."""
        request = self.build_prepared_request(
            method="GET", url=self.url_base, headers=self.http_headers,
        )
        # Set after preparing: requests would resolve a `..` id out of /v1/jobs/.
        request.url = f"{self.url_base}{job_path(job_id)}"
        try:
            return decode_json(self.send_with_retries(request, None))
        except GTMCLINotFoundError:
            return None

    def list_jobs(self) -> Iterable[dict[str, Any]]:
        """GET /v1/jobs, newest first, further pages read only as iterated."""
        return self.request_records(None)

    def _checkpoint(self) -> None:
        # The SDK writes STATE only every 10,000 records; after each settled job is
        # what makes a killed run resume without redoing finished jobs.
        self.state_manager.is_flushed = False
        self._write_state_message()

    @override
    def get_child_context(self, record: Record, context: Context | None) -> Context | None:
        status = record.get("status")
        if status == "failed" and (not expected_rows(record) or record.get("results_error")):
            return None  # nothing processed, or GTMCLI refused to serve it
        if status not in ("completed", "failed"):
            return None  # results are read only once, when the job is finished
        return {
            "job_id": str(record["id"]),
            "job_type": record.get("type"),
            # The check every page must add up to (None: the job does not say).
            "rows": expected_rows(record),
        }

    @override
    def _sync_children(self, child_context: Context | None) -> None:
        # The SDK logs a warning for every job without results to read; pending and
        # failed jobs are expected to have none.
        if child_context is not None:
            super()._sync_children(child_context)


class JobResultsStream(GTMCLIStream):
    """GET /v1/jobs/{job_id}/results: the rows of each job that completed since last run."""

    name = "job_results"
    path = "/v1/jobs/{job_id}/results"
    primary_keys = ("job_id", "row_number")
    parent_stream_type = JobsStream
    state_partitioning_keys = ()
    records_key = "results"
    # Rows are decoded JSON (no dates or decimals to convert) and fold_unknown_fields
    # already keeps the top level to the schema: the SDK's per-value conformance pass
    # was 45% of the tap's CPU and changed nothing.
    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE

    @cached_property
    def per_page(self) -> int:
        """Rows asked for per request."""
        return min(int(self.config.get("results_per_page", MAX_RESULTS_PER_PAGE)),
                   MAX_RESULTS_PER_PAGE)

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        assert context is not None  # a child stream always has its job
        job_id = str(context["job_id"])
        progress = _Progress(job_id, self.logger)
        try:
            if context.get("rows") is None:
                raise JobRowsMismatchError(job_id, (
                    "GTMCLI gave no usable row count (`total` of a completed job, "
                    "`completed` of a failed one), so its rows cannot be checked"))
            tally = JobRowsTally(job_id, context["rows"])
            pages = self.result_pages(context)
            try:
                yield from self._read_pages(context, pages, tally, progress)
            finally:
                pages.close()  # pages of this job requested ahead are dropped
            tally.finish()
        except GTMCLINotFoundError:
            self.logger.warning(
                "Job %s vanished (404) before its results were read; skipping it", job_id,
            )
            return
        except JobRowsMismatchError as mismatch:
            self.logger.error("%s", mismatch)
            self._jobs_stream.unread[job_id] = mismatch.problem
            return
        except BaseException:
            self.stop_reading_ahead()  # the run stops here: no page more is wanted
            raise
        progress.finish()

    def _read_pages(
        self, context: Context, pages: Iterator[ResultPage], tally: JobRowsTally,
        progress: _Progress,
    ) -> Iterator[dict[str, Any]]:
        with self.get_http_request_counter() as request_counter:
            request_counter.with_context(context)
            while True:
                with self.interruptible():
                    page = next(pages, None)
                if page is None:
                    return
                tally.add(page.number, page.per_page, page.row_count, page.digest)
                request_counter.increment()
                progress.page_done(page.number, page.total_pages, page.row_count)
                if page.record_lines is None:
                    yield from page.rows
                    continue
                # Written here, in order, before the SDK writes this job's STATE.
                if self.batch_spool is not None:
                    self.batch_spool.add_lines(self.name, page.record_lines, page.row_count)
                else:
                    self.writer.write_record_lines(page.record_lines)
                self._record_counter.increment(page.row_count)
                self.check_not_stopped()

    @property
    def _jobs_stream(self) -> JobsStream:
        jobs = self._tap.streams["jobs"]
        assert isinstance(jobs, JobsStream)
        return jobs

    def refusal(self, job: dict[str, Any]) -> str | None:
        """Why GTMCLI will not serve this job's results (one row asked), or None."""
        context = {"job_id": str(job["id"]), "job_type": job.get("type"), "rows": None}
        request = self.prepare_page_request(context, 1, per_page=1)
        try:
            self.send_with_retries(request, context)
        except GTMCLIFatalError as error:
            return str(error)
        return None

    def read_ahead(self, contexts: list[Context]) -> None:
        """Plan the result pages of these jobs, to be requested ahead in this order."""
        self._contexts.update((context["job_id"], context) for context in contexts)
        self.page_pipeline.plan([
            (context["job_id"], self._expected_pages(context)) for context in contexts
        ])

    def stop_reading_ahead(self) -> None:
        """Drop pages requested ahead and not read; stop the workers, even those waiting
        to retry (see PagePipeline.close)."""
        self.page_pipeline.close()
        self._contexts.clear()

    def result_pages(self, context: Context) -> Generator[ResultPage, None, None]:
        """The job's result pages in order, read ahead with the pages of later jobs."""
        self._contexts.setdefault(context["job_id"], context)
        return self.page_pipeline.pages(context["job_id"], self._expected_pages(context))

    @cached_property
    def page_pipeline(self) -> PagePipeline[PageRequest]:
        """The requests for result pages of every planned job, in job and page order."""
        pacer = self.pacer
        megabytes = self.config.get("max_read_ahead_mb") or DEFAULT_READ_AHEAD_MB
        return PagePipeline(
            prepare=lambda job_id, page: self._page_request(self._contexts[job_id], page),
            send=lambda request, stop: self.fetch_page(*request, stop=stop),
            window=lambda: pacer.window,
            workers=pacer.max_window,
            max_waiting_bytes=int(megabytes * 1024 * 1024),
        )

    @cached_property
    def _contexts(self) -> dict[str, Context]:
        return {}

    def _page_request(self, context: Context, page: int) -> PageRequest:
        return page, self.prepare_page_request(context, page), context

    def _expected_pages(self, context: Context) -> int | None:
        # Lets the first result pages of the job be requested together.
        rows = context.get("rows")
        return math.ceil(rows / self.per_page) if rows else None

    def prepare_page_request(
        self, context: Context, page: int, per_page: int | None = None
    ) -> requests.PreparedRequest:
        """The authenticated request for one page (built in the reading thread)."""
        request = self.build_prepared_request(
            method="GET",
            url=self.url_base,
            params={"page": page, "per_page": per_page or self.per_page},
            headers=self.http_headers,
        )
        # The job id is one encoded path segment; the URL is set after preparing, as
        # requests would resolve an id such as `..` out of /v1/jobs/.
        query = request.url.partition("?")[2] if request.url else ""
        request.url = f"{self.url_base}{job_path(context['job_id'], 'results')}?{query}"
        return request

    def fetch_page(
        self, page: int, request: requests.PreparedRequest, context: Context,
        stop: threading.Event | None = None,
    ) -> ResultPage:
        """Send one page request under the retry policy and parse it (in a worker); once
        `stop` is set, no further try is sent (see `send_with_retries`)."""
        response = self.send_with_retries(request, context, stop)
        job_id = str(context["job_id"])
        check = PageCheck(job_id, context["rows"], self.per_page)
        extracted_at = datetime.now(timezone.utc).isoformat()
        if self.writes_pages_directly:
            spliced = self.record_line_builder.build(
                response.content, job_id=job_id, job_type=context.get("job_type"),
                requested_page=page, per_page=self.per_page, extracted_at=extracted_at,
            )
            if spliced is not None:
                per_page = check.check(page, spliced.page, spliced.per_page, spliced.row_count)
                # Sized by what waits for its turn: the lines, not the answer they came from.
                return ResultPage(page, [], check.page_count(per_page), spliced.lines,
                                  spliced.row_count, len(spliced.lines), per_page,
                                  spliced.digest)
        parsed = parse_results_page(decode_json(response), job_id=job_id, requested_page=page,
                                    per_page=self.per_page, where=describe_request(response))
        per_page = check.check(page, parsed.page, parsed.per_page, len(parsed.rows))
        for row in parsed.rows:
            row["job_id"] = job_id
            row["job_type"] = context.get("job_type")
            self.fold_unknown_fields(row)
        result = ResultPage(page, parsed.rows, check.page_count(per_page),
                            byte_size=len(response.content), per_page=per_page,
                            digest=parsed.digest)
        if not self.writes_pages_directly:
            return result
        lines = self.record_line_builder.encode_rows(parsed.rows, extracted_at)
        # Only the lines are written: the rows need not wait beside them.
        return dataclasses.replace(result, rows=[], record_lines=lines, row_count=len(parsed.rows),
                                   byte_size=len(lines))

    @cached_property
    def record_line_builder(self) -> RecordLineBuilder:
        """Splices RECORD lines (BATCH mode: bare rows) from pages of known fields."""
        return RecordLineBuilder(self.name, self.schema["properties"],
                                 envelope=self.batch_spool is None)

    @override
    def post_process(self, row: Record, context: Context | None = None) -> Record | None:
        return row  # completed in fetch_page, off the reading thread

    @property
    def writer(self) -> TapMessageWriter:
        """The tap's message writer."""
        writer = self._tap.message_writer
        assert isinstance(writer, TapMessageWriter)
        return writer

    @cached_property
    def writes_pages_directly(self) -> bool:
        """True when each page can go out as one block of RECORD lines.

        That is when the SDK's per-record path would leave every row as it is: all
        fields selected, no type conformance, the default stream map without
        flattening, and no dry-run record limit. The path costs more CPU than the whole
        rest of an extraction; anything else (a catalog deselecting fields, stream maps,
        flattening, `--test`) takes it as usual. In BATCH mode pages always go straight
        into the files: the SDK does not map file contents either.
        """
        stream_map = self.stream_maps[0]
        return self.batch_spool is not None or (
            isinstance(self._tap.message_writer, TapMessageWriter)
            and self._record_path_is_trivial
            and self.ABORT_AT_RECORD_COUNT is None
            and len(self.stream_maps) == 1
            and type(stream_map) is SameRecordTransform
            and not stream_map.flattening_enabled
            and stream_map.stream_alias == self.name
        )

    @override
    def get_record_counter(
        self, *, endpoint: str | None = None, log_interval: float = metrics.DEFAULT_LOG_INTERVAL
    ) -> metrics.Counter:
        # Kept so that rows written a page at a time still count in the SDK's metrics.
        self._record_counter = super().get_record_counter(
            endpoint=endpoint, log_interval=log_interval
        )
        return self._record_counter


class _Progress:
    """Logs pages done of total and rows per second for one job, every few seconds."""

    def __init__(self, job_id: str, logger: logging.Logger) -> None:
        self.job_id = job_id
        self.logger = logger
        self.started = self.last_logged = time.monotonic()
        self.rows = 0
        self.pages = 0
        self.total_pages: int | None = None

    def page_done(self, page: int, total_pages: int | None, rows: int) -> None:
        self.rows += rows
        self.pages = page
        self.total_pages = total_pages
        now = time.monotonic()
        if now - self.last_logged >= PROGRESS_LOG_SECONDS:
            self.last_logged = now
            self._log("progress")

    def finish(self) -> None:
        self._log("done")

    def _log(self, what: str) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self.logger.info(
            "Job %s results %s: page %d of %s, %d rows, %.0f rows/s",
            self.job_id, what, self.pages, self.total_pages or "?", self.rows,
            self.rows / elapsed,
        )
