"""Jobs, their submitted items and computed result rows, in one SQLite database.

The same code serves `:memory:` and a file; a file uses WAL so a restart loses nothing.
One connection behind one lock keeps SQLite's threading rules simple. Items are stored
as JSON arrays of CHUNK_ROWS items; result rows are stored pre-joined in the same
chunks with their end offsets and costs, so a 1,000-row page is about eleven blob reads
and byte slices, not a thousand row fetches. `computed` counts the rows stored so far:
the processor adds chunks in item order until `computed_at` is set.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tap_gtmcli.sandbox.lifecycle import JobProgress, JobTimeline

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
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
    -- cost: of the rows computed so far (the job's cost once computed_at is set);
    -- reserve: the worst case, held from the balance until then.
    cost REAL NOT NULL,
    reserve REAL NOT NULL,
    charged INTEGER NOT NULL,
    computed INTEGER NOT NULL,
    computed_at REAL,
    created_at REAL NOT NULL,
    starts_at REAL NOT NULL,
    completes_at REAL NOT NULL,
    fail_at REAL,
    fail_after INTEGER,
    fail_cost REAL,
    fail_ready_at REAL,
    error TEXT,
    webhook_url TEXT,
    webhook_state INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_creation ON jobs (created_at, seq);
CREATE INDEX IF NOT EXISTS jobs_computing ON jobs (computed_at, seq);
-- `body` is a JSON array of the chunk's items, as submitted.
CREATE TABLE IF NOT EXISTS item_chunks (
    job_seq INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (job_seq, chunk)
) WITHOUT ROWID;
-- `body` is the chunk's rows joined by commas; `ends` the end offset of each row
-- (array of uint32); `costs` each row's credits (array of doubles).
CREATE TABLE IF NOT EXISTS result_chunks (
    job_seq INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    body BLOB NOT NULL,
    ends BLOB NOT NULL,
    costs BLOB NOT NULL,
    PRIMARY KEY (job_seq, chunk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger (
    name TEXT PRIMARY KEY,
    amount REAL NOT NULL
);
"""
_JOB_COLUMNS = (
    "seq, id, type, total, cost, reserve, charged, computed, computed_at, created_at,"
    " starts_at, completes_at, fail_at, fail_after, fail_cost, fail_ready_at, error,"
    " webhook_url, webhook_state"
)
ChunkRow = tuple[int, int, bytes, bytes, bytes]
# Charges of deleted jobs stay spent: deleting a job is not a refund.
_DELETED_CHARGES = "deleted_charges"


class InsufficientCreditsError(Exception):
    """The balance does not cover a job's worst-case cost; nothing was stored."""

    def __init__(self, balance: float, cost: float) -> None:
        super().__init__(f"the job may cost {cost:g} credits but the balance is {balance:g}")
        self.balance = balance
        self.cost = cost


@dataclass(frozen=True)
class JobRecord:
    """One stored job, as the store knows it.

    Its visible progress is the smaller of the clock's `timeline` and the rows
    `computed` so far: a job only completes (or fails) once its rows exist.
    """

    seq: int
    id: str
    type: str
    total: int
    cost: float
    reserve: float
    charged: bool
    computed: int
    computed_at: float | None
    created_at: float
    timeline: JobTimeline
    fail_cost: float | None
    fail_ready_at: float | None
    error: str | None
    webhook_url: str | None
    webhook_state: int

    @property
    def fully_computed(self) -> bool:
        """Whether every row is stored."""
        return self.computed >= self.total

    def progress_at(self, now: float) -> JobProgress:
        """Status, visible rows and finish time at `now`: min(timeline, rows computed)."""
        planned = self.timeline.progress_at(now)
        if planned.status == "failed":
            if self.fail_ready_at is not None and planned.finished_at is not None:
                return JobProgress(
                    "failed", planned.completed, max(planned.finished_at, self.fail_ready_at)
                )
            return JobProgress("processing", min(planned.completed, self.computed), None)
        if planned.status == "completed":
            if self.fully_computed and self.computed_at is not None:
                finished = max(self.timeline.completes_at, self.computed_at)
                return JobProgress("completed", self.total, finished)
            return JobProgress("processing", min(self.computed, self.total - 1), None)
        if planned.status == "processing":
            return JobProgress("processing", min(planned.completed, self.computed), None)
        return planned

    def ends_at(self) -> float | None:
        """When the job turns completed or failed; None while that waits on computation."""
        fail_at = self.timeline.fail_at
        failure = None
        if fail_at is not None and self.fail_ready_at is not None:
            failure = max(fail_at, self.fail_ready_at)
        if fail_at is not None and fail_at <= self.timeline.completes_at:
            return failure
        if self.fully_computed and self.computed_at is not None:
            completion = max(self.timeline.completes_at, self.computed_at)
            if fail_at is None or completion < fail_at:
                return completion
        return failure

    def charge_at(self, now: float) -> float:
        """Credits this job holds from the balance at `now`.

        The worst case (`reserve`) until the rows are computed, then their cost; a
        failure pays only the rows done before it.
        """
        if not self.charged:
            return 0.0
        fail_at = self.timeline.fail_at
        if fail_at is not None and fail_at <= now and self.fail_cost is not None:
            return self.fail_cost
        if self.computed_at is None:
            return self.reserve
        return self.cost


@dataclass(frozen=True)
class NewJob:
    """Everything needed to store a job.

    `item_chunks` are JSON arrays of CHUNK_ROWS items. With `results` (encoded rows)
    and `row_costs` the job is stored fully computed; without, the processor computes it.
    """

    id: str
    type: str
    created_at: float
    timeline: JobTimeline
    reserve: float
    charged: bool
    item_chunks: Sequence[bytes]
    results: Sequence[bytes] | None = None
    row_costs: Sequence[float] | None = None
    error: str | None = None
    fail_cost: float | None = None
    fail_ready_at: float | None = None
    webhook_url: str | None = None


class JobStore:
    """Thread-safe access to the sandbox database."""

    def __init__(self, db_path: str | None = None) -> None:
        self._lock = threading.RLock()
        if db_path:
            # `--db output/sandbox.db` on a fresh clone: SQLite creates the file, not its folder.
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
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
        """Store a job atomically, first checking that `credit_limit` covers its reserve."""
        computed = job.results is not None
        cost = float(sum(job.row_costs or ())) if computed else 0.0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if credit_limit is not None and job.charged:
                    balance = credit_limit - self._credits_spent(now)
                    if job.reserve > balance:
                        raise InsufficientCreditsError(balance, job.reserve)
                timeline = job.timeline
                cursor = self._db.execute(
                    "INSERT INTO jobs (id, type, total, cost, reserve, charged, computed,"
                    " computed_at, created_at, starts_at, completes_at, fail_at, fail_after,"
                    " fail_cost, fail_ready_at, error, webhook_url)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job.id, job.type, timeline.total, cost, job.reserve, int(job.charged),
                        timeline.total if computed else 0, now if computed else None,
                        job.created_at, timeline.starts_at, timeline.completes_at,
                        timeline.fail_at, timeline.fail_after, job.fail_cost, job.fail_ready_at,
                        job.error, job.webhook_url,
                    ),
                )
                seq = cursor.lastrowid or 0
                self._db.executemany(
                    "INSERT INTO item_chunks (job_seq, chunk, body) VALUES (?, ?, ?)",
                    ((seq, chunk, body) for chunk, body in enumerate(job.item_chunks)),
                )
                if job.results is not None and job.row_costs is not None:
                    self._insert_chunks(chunk_rows(seq, 0, job.results, job.row_costs))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        record = self.get_job(job.id)
        assert record is not None
        return record

    def _insert_chunks(self, chunks: Iterable[ChunkRow]) -> None:
        self._db.executemany(
            "INSERT INTO result_chunks (job_seq, chunk, body, ends, costs)"
            " VALUES (?, ?, ?, ?, ?)",
            chunks,
        )

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

    def next_uncomputed(self) -> JobRecord | None:
        """The oldest job whose rows are not all computed yet."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE computed_at IS NULL"  # noqa: S608
                " ORDER BY seq LIMIT 1"
            ).fetchone()
        return _record(row) if row else None

    def item_chunks(self, job_seq: int, first: int, stop: int) -> list[bytes]:
        """Item chunks with index in [first, stop), in order (JSON arrays)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM item_chunks WHERE job_seq = ? AND chunk >= ? AND chunk < ?"
                " ORDER BY chunk",
                (job_seq, first, stop),
            ).fetchall()
        return [row[0] for row in rows]

    def add_computed(
        self, record: JobRecord, chunks: Sequence[ChunkRow], *, computed: int, cost: float,
        now: float, fail_cost: float | None,
    ) -> JobRecord | None:
        """Store the next result chunks of a job the processor read as `record`.

        Sets `computed_at` when the last row arrives and `fail_cost`/`fail_ready_at`
        when a planned failure's rows are all done. Returns the updated record, or None
        (and stores nothing) if the job was deleted, failed or changed meanwhile.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                updated = self._db.execute(
                    "UPDATE jobs SET computed = ?, cost = ?,"
                    " computed_at = CASE WHEN ? >= total THEN ? ELSE NULL END,"
                    " fail_cost = COALESCE(fail_cost, ?),"
                    " fail_ready_at = CASE WHEN fail_ready_at IS NULL AND ? IS NOT NULL"
                    " THEN ? ELSE fail_ready_at END"
                    " WHERE seq = ? AND computed = ? AND computed_at IS NULL",
                    (computed, cost, computed, now, fail_cost, fail_cost, now, record.seq,
                     record.computed),
                ).rowcount
                if updated:
                    self._insert_chunks(chunks)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get_job(record.id) if updated else None

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
        """The job's item chunks as submitted (JSON arrays), in order."""
        return self.item_chunks(job_seq, 0, 2**31)

    def row_costs(self, job_seq: int, count: int) -> list[float]:
        """Costs of the job's first `count` computed rows (fewer if not computed yet)."""
        if count <= 0:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT costs FROM result_chunks WHERE job_seq = ? AND chunk <= ?"
                " ORDER BY chunk",
                (job_seq, (count - 1) // CHUNK_ROWS),
            ).fetchall()
        costs = array("d")
        for (blob,) in rows:
            costs.frombytes(blob)
        return list(costs[:count])

    def cost_of_first(self, job_seq: int, count: int) -> float:
        """Credits the job's first `count` (computed) rows cost."""
        return float(sum(self.row_costs(job_seq, count)))

    def mark_failed(
        self, job_id: str, fail_at: float, fail_after: int, fail_cost: float, error: str
    ) -> None:
        """Make a job fail at `fail_at` after `fail_after` rows (all computed); it stops
        computing and owes another webhook."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET fail_at = ?, fail_after = ?, fail_cost = ?, fail_ready_at = ?,"
                " error = ?, webhook_state = ?, computed_at = COALESCE(computed_at, ?)"
                " WHERE id = ?",
                (fail_at, fail_after, fail_cost, fail_at, error, WEBHOOK_PENDING, fail_at,
                 job_id),
            )

    def delete_job(self, job_id: str, charge: float) -> bool:
        """Remove a job and its rows, keeping `charge` spent. False if it did not exist."""
        with self._lock:
            record = self.get_job(job_id)
            if record is None:
                return False
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO ledger (name, amount) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET amount = amount + excluded.amount",
                    (_DELETED_CHARGES, charge),
                )
                self._db.execute("DELETE FROM item_chunks WHERE job_seq = ?", (record.seq,))
                self._db.execute("DELETE FROM result_chunks WHERE job_seq = ?", (record.seq,))
                self._db.execute("DELETE FROM jobs WHERE seq = ?", (record.seq,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    def credits_spent(self, now: float) -> float:
        """All credits charged or held so far, deleted jobs included."""
        with self._lock:
            return self._credits_spent(now)

    def _credits_spent(self, now: float) -> float:
        # Mirrors JobRecord.charge_at.
        live = self._db.execute(
            "SELECT TOTAL(CASE WHEN charged = 0 THEN 0"
            " WHEN fail_at IS NOT NULL AND fail_at <= ? AND fail_cost IS NOT NULL"
            " THEN fail_cost"
            " WHEN computed_at IS NULL THEN reserve"
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


def chunk_rows(
    job_seq: int, first_chunk: int, results: Sequence[bytes], costs: Sequence[float]
) -> Iterator[ChunkRow]:
    """Result chunks (pre-joined rows, end offsets, costs) from chunk `first_chunk` on."""
    for offset, first in enumerate(range(0, len(results), CHUNK_ROWS)):
        rows = results[first : first + CHUNK_ROWS]
        ends = array("I")
        end = -1
        for row in rows:
            end += len(row) + 1
            ends.append(end)
        yield (
            job_seq, first_chunk + offset, b",".join(rows), ends.tobytes(),
            array("d", costs[first : first + CHUNK_ROWS]).tobytes(),
        )


def _record(row: Any) -> JobRecord:
    (seq, job_id, job_type, total, cost, reserve, charged, computed, computed_at, created_at,
     starts_at, completes_at, fail_at, fail_after, fail_cost, fail_ready_at, error,
     webhook_url, webhook_state) = row
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
        reserve=float(reserve),
        charged=bool(charged),
        computed=int(computed),
        computed_at=None if computed_at is None else float(computed_at),
        created_at=float(created_at),
        timeline=timeline,
        fail_cost=None if fail_cost is None else float(fail_cost),
        fail_ready_at=None if fail_ready_at is None else float(fail_ready_at),
        error=None if error is None else str(error),
        webhook_url=None if webhook_url is None else str(webhook_url),
        webhook_state=int(webhook_state),
    )
