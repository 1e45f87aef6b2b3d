"""Jobs, their submitted items and precomputed result rows, in one SQLite database.

The same code serves `:memory:` and a file; a file uses WAL so a restart loses nothing.
One connection behind one lock keeps SQLite's threading rules simple. Result rows are
stored pre-joined in chunks of CHUNK_ROWS with their end offsets, so a 1,000-row page
is about eleven blob reads and byte slices, not a thousand row fetches.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tap_gtmcli.sandbox.lifecycle import JobTimeline

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
CHUNK_ROWS = 100
WEBHOOK_PENDING = 0
WEBHOOK_DELIVERED = 1
WEBHOOK_ABANDONED = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    total INTEGER NOT NULL,
    cost REAL NOT NULL,
    charged INTEGER NOT NULL,
    created_at REAL NOT NULL,
    starts_at REAL NOT NULL,
    completes_at REAL NOT NULL,
    fail_at REAL,
    fail_after INTEGER,
    fail_cost REAL,
    error TEXT,
    webhook_url TEXT,
    webhook_state INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_creation ON jobs (created_at, seq);
CREATE TABLE IF NOT EXISTS job_items (
    job_seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    cost REAL NOT NULL,
    item BLOB NOT NULL,
    PRIMARY KEY (job_seq, idx)
) WITHOUT ROWID;
-- `body` is the chunk's rows joined by commas; `ends` the end offset of each row.
CREATE TABLE IF NOT EXISTS result_chunks (
    job_seq INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    body BLOB NOT NULL,
    ends BLOB NOT NULL,
    PRIMARY KEY (job_seq, chunk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger (
    name TEXT PRIMARY KEY,
    amount REAL NOT NULL
);
"""
_JOB_COLUMNS = (
    "seq, id, type, total, cost, charged, created_at, starts_at, completes_at,"
    " fail_at, fail_after, fail_cost, error, webhook_url, webhook_state"
)
# Charges of deleted jobs stay spent: deleting a job is not a refund.
_DELETED_CHARGES = "deleted_charges"


class InsufficientCreditsError(Exception):
    """The balance does not cover a job's cost; nothing was stored."""

    def __init__(self, balance: float, cost: float) -> None:
        super().__init__(f"the job costs {cost:g} credits but the balance is {balance:g}")
        self.balance = balance
        self.cost = cost


@dataclass(frozen=True)
class JobRecord:
    """One stored job, as the store knows it (status comes from `timeline`)."""

    seq: int
    id: str
    type: str
    total: int
    cost: float
    charged: bool
    created_at: float
    timeline: JobTimeline
    fail_cost: float | None
    error: str | None
    webhook_url: str | None
    webhook_state: int

    def charge_at(self, now: float) -> float:
        """Credits this job holds from the balance at `now`: failures pay only rows done."""
        if not self.charged:
            return 0.0
        failed = self.timeline.fail_at is not None and now >= self.timeline.fail_at
        return (self.fail_cost or 0.0) if failed else self.cost


@dataclass(frozen=True)
class NewJob:
    """Everything needed to store a job; rows are precomputed JSON bytes."""

    id: str
    type: str
    created_at: float
    timeline: JobTimeline
    cost: float
    charged: bool
    items: Sequence[bytes]
    results: Sequence[bytes]
    row_costs: Sequence[float]
    error: str | None = None
    fail_cost: float | None = None
    webhook_url: str | None = None


class JobStore:
    """Thread-safe access to the sandbox database."""

    def __init__(self, db_path: str | None = None) -> None:
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            db_path or ":memory:", check_same_thread=False, isolation_level=None
        )
        if db_path:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        has_tables = self._db.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'"
        ).fetchone()[0]
        if has_tables and version != SCHEMA_VERSION:
            # Sandbox data is disposable; a layout from another version cannot be read.
            logger.warning("sandbox database %s has an old layout: starting it afresh", db_path)
            for (table,) in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%'"
            ).fetchall():
                self._db.execute(f'DROP TABLE "{table}"')
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Release the database; a file database keeps everything for the next start."""
        with self._lock:
            self._db.close()

    def insert_job(self, job: NewJob, now: float, credit_limit: float | None) -> JobRecord:
        """Store a job atomically, first checking that `credit_limit` covers its charge."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if credit_limit is not None and job.charged:
                    balance = credit_limit - self._credits_spent(now)
                    if job.cost > balance:
                        raise InsufficientCreditsError(balance, job.cost)
                timeline = job.timeline
                cursor = self._db.execute(
                    "INSERT INTO jobs (id, type, total, cost, charged, created_at, starts_at,"
                    " completes_at, fail_at, fail_after, fail_cost, error, webhook_url)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job.id, job.type, timeline.total, job.cost, int(job.charged),
                        job.created_at, timeline.starts_at, timeline.completes_at,
                        timeline.fail_at, timeline.fail_after, job.fail_cost, job.error,
                        job.webhook_url,
                    ),
                )
                seq = cursor.lastrowid
                self._db.executemany(
                    "INSERT INTO job_items (job_seq, idx, cost, item) VALUES (?, ?, ?, ?)",
                    _item_tuples(seq or 0, job),
                )
                self._db.executemany(
                    "INSERT INTO result_chunks (job_seq, chunk, body, ends) VALUES (?, ?, ?, ?)",
                    _chunk_tuples(seq or 0, job.results),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        record = self.get_job(job.id)
        assert record is not None
        return record

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job with this id, if it exists."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)  # noqa: S608
            ).fetchone()
        return _record(row) if row else None

    def list_jobs(self, offset: int = 0, limit: int = -1) -> list[JobRecord]:
        """Jobs, most recently created first; ties go to the later insert."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs"  # noqa: S608
                " ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [_record(row) for row in rows]

    def count_jobs(self) -> int:
        """How many jobs exist."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def joined_results(self, job_seq: int, start: int, stop: int) -> bytes:
        """Result rows with 0-based index in [start, stop), in item order, joined by commas."""
        if start >= stop:
            return b""
        first_chunk, last_chunk = start // CHUNK_ROWS, (stop - 1) // CHUNK_ROWS
        with self._lock:
            chunks = self._db.execute(
                "SELECT chunk, body, ends FROM result_chunks"
                " WHERE job_seq = ? AND chunk >= ? AND chunk <= ? ORDER BY chunk",
                (job_seq, first_chunk, last_chunk),
            ).fetchall()
        pieces = []
        for chunk, body, ends_blob in chunks:
            ends = array("I")
            ends.frombytes(ends_blob)
            low = max(start - chunk * CHUNK_ROWS, 0)
            high = min(stop - chunk * CHUNK_ROWS, len(ends))
            # Row i spans from just after row i-1's comma to ends[i].
            begin = ends[low - 1] + 1 if low else 0
            pieces.append(body[begin : ends[high - 1]])
        return b",".join(pieces)

    def items(self, job_seq: int) -> list[bytes]:
        """The job's items as submitted (JSON bytes), in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT item FROM job_items WHERE job_seq = ? ORDER BY idx", (job_seq,)
            ).fetchall()
        return [row[0] for row in rows]

    def cost_of_first(self, job_seq: int, count: int) -> float:
        """Credits the job's first `count` rows cost."""
        with self._lock:
            total = self._db.execute(
                "SELECT TOTAL(cost) FROM job_items WHERE job_seq = ? AND idx < ?",
                (job_seq, count),
            ).fetchone()[0]
        return float(total)

    def mark_failed(
        self, job_id: str, fail_at: float, fail_after: int, fail_cost: float, error: str
    ) -> None:
        """Make a job fail at `fail_at` after `fail_after` items; it owes another webhook."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET fail_at = ?, fail_after = ?, fail_cost = ?, error = ?,"
                " webhook_state = ? WHERE id = ?",
                (fail_at, fail_after, fail_cost, error, WEBHOOK_PENDING, job_id),
            )

    def delete_job(self, job_id: str, now: float) -> bool:
        """Remove a job and its rows; its charge stays spent. False if it did not exist."""
        with self._lock:
            record = self.get_job(job_id)
            if record is None:
                return False
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO ledger (name, amount) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET amount = amount + excluded.amount",
                    (_DELETED_CHARGES, record.charge_at(now)),
                )
                self._db.execute("DELETE FROM job_items WHERE job_seq = ?", (record.seq,))
                self._db.execute("DELETE FROM result_chunks WHERE job_seq = ?", (record.seq,))
                self._db.execute("DELETE FROM jobs WHERE seq = ?", (record.seq,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    def credits_spent(self, now: float) -> float:
        """All credits charged so far, deleted jobs included."""
        with self._lock:
            return self._credits_spent(now)

    def _credits_spent(self, now: float) -> float:
        live = self._db.execute(
            "SELECT TOTAL(CASE WHEN charged = 0 THEN 0"
            " WHEN fail_at IS NOT NULL AND fail_at <= ? THEN COALESCE(fail_cost, 0)"
            " ELSE cost END) FROM jobs",
            (now,),
        ).fetchone()[0]
        deleted = self._db.execute(
            "SELECT amount FROM ledger WHERE name = ?", (_DELETED_CHARGES,)
        ).fetchone()
        return float(live) + (float(deleted[0]) if deleted else 0.0)

    def set_webhook_state(self, job_id: str, state: int) -> None:
        """Record whether a job's webhook was delivered or given up."""
        with self._lock:
            self._db.execute("UPDATE jobs SET webhook_state = ? WHERE id = ?", (state, job_id))

    def jobs_owing_webhook(self) -> list[JobRecord]:
        """Jobs with a webhook URL whose terminal event has not been settled yet."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs"  # noqa: S608
                " WHERE webhook_url IS NOT NULL AND webhook_state = ?",
                (WEBHOOK_PENDING,),
            ).fetchall()
        return [_record(row) for row in rows]


def _item_tuples(job_seq: int, job: NewJob) -> Iterator[tuple[int, int, float, bytes]]:
    for index, (item, cost) in enumerate(zip(job.items, job.row_costs, strict=True)):
        yield job_seq, index, cost, item


def _chunk_tuples(
    job_seq: int, results: Sequence[bytes]
) -> Iterator[tuple[int, int, bytes, bytes]]:
    for chunk, first in enumerate(range(0, len(results), CHUNK_ROWS)):
        rows = results[first : first + CHUNK_ROWS]
        ends = array("I")
        offset = -1
        for row in rows:
            offset += len(row) + 1
            ends.append(offset)
        yield job_seq, chunk, b",".join(rows), ends.tobytes()


def _record(row: Any) -> JobRecord:
    (seq, job_id, job_type, total, cost, charged, created_at, starts_at, completes_at,
     fail_at, fail_after, fail_cost, error, webhook_url, webhook_state) = row
    timeline = JobTimeline(
        total=int(total),
        starts_at=float(starts_at),
        completes_at=float(completes_at),
        fail_at=None if fail_at is None else float(fail_at),
        fail_after=None if fail_after is None else int(fail_after),
    )
    return JobRecord(
        seq=int(seq),
        id=str(job_id),
        type=str(job_type),
        total=timeline.total,
        cost=float(cost),
        charged=bool(charged),
        created_at=float(created_at),
        timeline=timeline,
        fail_cost=None if fail_cost is None else float(fail_cost),
        error=None if error is None else str(error),
        webhook_url=None if webhook_url is None else str(webhook_url),
        webhook_state=int(webhook_state),
    )
