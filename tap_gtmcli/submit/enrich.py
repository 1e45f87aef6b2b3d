"""Enrich mode: wait for a job, read its results and attach them to the waiting records.

Records wait on disk (a temporary SQLite file), never in memory, so peak memory does not
grow with the input. Result rows come in the order of the submitted items, so row k
answers the item at position k; validate rows are checked by email on the way in.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from singer_sdk.contrib.msgspec import decoder, encoder

from tap_gtmcli.api.client import FINISHED_STATUSES, GTMCLIClient
from tap_gtmcli.api.errors import (
    EnrichmentFailedError,
    GTMCLIFatalError,
    GTMCLIRetriableError,
    GTMCLIRetriesExhaustedError,
)
from tap_gtmcli.api.retry import growing_pauses, poll_until

RESULTS_PER_PAGE = 1000
MAX_POLL_SECONDS = 60.0
#: The fields added to every record of an acted-on stream, all nullable.
ENRICHMENT_SCHEMA: dict[str, dict[str, Any]] = {
    "gtmcli_status": {"type": ["string", "null"]},
    "gtmcli_sub_status": {"type": ["string", "null"]},
    "gtmcli_provider": {"type": ["string", "null"]},
    "gtmcli_email": {"type": ["string", "null"]},
    "gtmcli_confidence": {"type": ["number", "null"]},
    "gtmcli_convention": {"type": ["string", "null"]},
    "gtmcli_job_id": {"type": ["string", "null"]},
}
NO_ENRICHMENT: dict[str, Any] = dict.fromkeys(ENRICHMENT_SCHEMA)
#: How many spooled records are written to SQLite at once.
SPOOL_CHUNK = 2000


def extend_schema(schema: Any) -> Any:
    """A copy of a stream's JSON Schema with the nullable `gtmcli_*` fields added."""
    if not isinstance(schema, dict):
        return schema
    properties = schema.get("properties")
    extended_properties = dict(properties) if isinstance(properties, dict) else {}
    extended_properties.update(ENRICHMENT_SCHEMA)
    return {**schema, "properties": extended_properties}


def enrichment_fields(row: dict[str, Any], job_id: str) -> dict[str, Any]:
    """The `gtmcli_*` values of one result row."""

    def text(name: str) -> str | None:
        value = row.get(name)
        return value if isinstance(value, str) and value else None

    confidence = row.get("confidence")
    return {
        "gtmcli_status": text("status"),
        "gtmcli_sub_status": text("sub_status"),
        "gtmcli_provider": text("provider"),
        "gtmcli_email": text("email"),
        "gtmcli_confidence": confidence if isinstance(confidence, int | float) else None,
        "gtmcli_convention": text("convention"),
        "gtmcli_job_id": job_id,
    }


class EnrichBacklog:
    """Records waiting for their batch's results, in a temporary SQLite file."""

    def __init__(self, directory: str | None = None) -> None:
        handle, self.path = tempfile.mkstemp(
            prefix="gtmcli-spool-", suffix=".sqlite", dir=directory
        )
        os.close(handle)
        # The spool is scratch space: durability would only slow it down.
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA cache_size = -16000;
            CREATE TABLE records (
                seq INTEGER PRIMARY KEY, batch INTEGER, position INTEGER, message BLOB);
            CREATE TABLE results (
                batch INTEGER, position INTEGER, fields BLOB, PRIMARY KEY (batch, position));
            """
        )
        self._pending: list[tuple[int, int, int, bytes]] = []

    def add(self, seq: int, batch: int, position: int, message: bytes) -> None:
        """Park one RECORD message of a batch, as its JSON line."""
        self._pending.append((seq, batch, position, message))
        if len(self._pending) >= SPOOL_CHUNK:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            self._db.executemany("INSERT INTO records VALUES (?, ?, ?, ?)", self._pending)
            self._pending.clear()

    def add_results(self, batch: int, rows: Iterator[tuple[int, dict[str, Any]]]) -> None:
        """Store the enrichment fields of a batch, by item position."""
        self._db.execute("BEGIN")
        chunk: list[tuple[int, int, bytes]] = []
        for position, fields in rows:
            chunk.append((batch, position, encoder.encode(fields)))
            if len(chunk) >= SPOOL_CHUNK:
                self._db.executemany("INSERT INTO results VALUES (?, ?, ?)", chunk)
                chunk.clear()
        self._db.executemany("INSERT INTO results VALUES (?, ?, ?)", chunk)
        self._db.execute("COMMIT")

    def enriched(self, batch: int) -> Iterator[dict[str, Any]]:
        """The batch's RECORD messages in arrival order, each with its fields added."""
        self._write_pending()
        cursor = self._db.execute(
            "SELECT r.message, s.fields FROM records r LEFT JOIN results s "
            "ON s.batch = r.batch AND s.position = r.position "
            "WHERE r.batch = ? ORDER BY r.seq",
            (batch,),
        )
        for message_blob, fields_blob in cursor:
            message = decoder.decode(message_blob)
            fields = decoder.decode(fields_blob) if fields_blob is not None else NO_ENRICHMENT
            message["record"] = {**message["record"], **fields}
            yield message
        self._db.execute("DELETE FROM records WHERE batch = ?", (batch,))
        self._db.execute("DELETE FROM results WHERE batch = ?", (batch,))

    def close(self) -> None:
        """Delete the spool file."""
        self._db.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class ResultsFetcher:
    """Waits for jobs to complete and reads their results."""

    def __init__(
        self,
        *,
        client: GTMCLIClient,
        poll_interval: float,
        max_wait: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.poll_interval = poll_interval
        self.max_wait = max_wait
        self._sleep = sleep
        self._clock = clock

    def wait(self, job_id: str) -> dict[str, Any]:
        """Poll until the job completes; raise `EnrichmentFailedError` if it fails or times out."""
        job = poll_until(
            lambda: self._call(job_id, "checking", lambda: self.client.get_job(job_id)),
            lambda answer: answer.get("status") in FINISHED_STATUSES,
            # Back off so a long job costs few requests; the cap keeps completion prompt.
            pauses=growing_pauses(
                self.poll_interval, 1.5, max(self.poll_interval, MAX_POLL_SECONDS)
            ),
            deadline=self._clock() + self.max_wait,
            clock=self._clock,
            sleep=self._sleep,
        )
        status = job.get("status")
        if status == "completed":
            return job
        if status == "failed":
            reason = job.get("error") or "no reason given"
            msg = f"GTMCLI job {job_id} failed: {reason}"
            raise EnrichmentFailedError(msg)
        msg = (
            f"GTMCLI job {job_id} did not complete within max_wait={self.max_wait:g} s "
            f"(status {status!r}, {job.get('completed')} of {job.get('total')} done)"
        )
        raise EnrichmentFailedError(msg)

    def result_rows(
        self, job_id: str, job_type: str, emails: list[str] | None, item_count: int
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """(position, enrichment fields) for every item, checked against the items."""
        position = 0
        page = 1
        while position < item_count:
            body = self._call(
                job_id,
                "reading results of",
                partial(self.client.get_results_page, job_id, page, RESULTS_PER_PAGE),
            )
            rows = body.get("results")
            if not isinstance(rows, list) or not rows:
                break
            for raw_row in rows:
                if position >= item_count:
                    break
                row = raw_row if isinstance(raw_row, dict) else {}
                if emails is not None:
                    answered = row.get("email")
                    expected = emails[position]
                    if not isinstance(answered, str) or answered.strip().lower() != expected:
                        # The emails themselves stay out of the message: they are personal data.
                        msg = (
                            f"GTMCLI job {job_id} result row {position + 1} answers a "
                            f"different email than submitted item {position + 1}"
                        )
                        raise EnrichmentFailedError(msg)
                yield position, enrichment_fields(row, job_id)
                position += 1
            page += 1
        if position < item_count:
            msg = (
                f"GTMCLI job {job_id} ({job_type}) answered {position} result rows for "
                f"{item_count} items"
            )
            raise EnrichmentFailedError(msg)

    @staticmethod
    def _call(job_id: str, doing: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return call()
        except (GTMCLIFatalError, GTMCLIRetriableError, GTMCLIRetriesExhaustedError) as error:
            msg = f"Failed {doing} GTMCLI job {job_id}: {error}"
            raise EnrichmentFailedError(msg) from error
