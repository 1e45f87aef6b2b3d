"""The submission index: which items an account sent to GTMCLI, when, and in which job.

The rule it keeps: an item is known only once GTMCLI confirmed the job holding it, and
only for the account that sent it. Entries are 16-byte digests of the normalised item,
keyed by a fingerprint of the API URL and key (`account_secret`): the index holds no
email, name or key, two accounts (or the sandbox and production) never share an entry,
and a stolen index cannot be matched against a list of emails without the API key.

Every create is announced first: an *intent* (the batch's digests, job type, item count
and the moment it was sent) is written before `POST /v1/jobs` and closed when the job is
recorded. A run killed in between leaves the intent open, and the next run reconciles it
against `GET /v1/jobs` (`intent_reconciler.py`) instead of paying for the batch again.

Two stores keep the same interface. `SQLiteIndex` (here; one machine, one run at a time)
is a file holding one row per confirmed job with its items' digests, read into memory
once per run, so a batch costs one insert and one set lookup. `PostgresIndex`
(`postgres_index.py`) is shared by several workers.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tap_gtmcli.api.errors import SubmissionIndexError

DIGEST_BYTES = 16
POSTGRES_SCHEMES = ("postgresql", "postgres")
#: The default file inside a Meltano project, shared by mapper-gtmcli and target-gtmcli.
MELTANO_INDEX_PATH = Path(".meltano", "run", "gtmcli", "submission_index.sqlite")
INDEX_FILE_NAME = "submission_index.sqlite"

#: What `claim` returns: the items to skip, each with its stored result when asked for.
Known = dict[bytes, bytes | None]


def account_secret(api_url: str, api_key: str) -> bytes:
    """The per-account key of every digest: derived from the API URL and key, never them."""
    account = f"{api_url.strip().rstrip('/').lower()}\n{api_key}".encode()
    return hashlib.blake2b(account, digest_size=32, person=b"gtmcli-index-v1").digest()


def account_id(secret: bytes) -> bytes:
    """The account an intent belongs to, as stored: one more hash away from the secret."""
    return hashlib.blake2b(secret, digest_size=16, person=b"gtmcli-account").digest()


def default_location(environ: Mapping[str, str] = os.environ) -> str:
    """Where the index lives when `submission_index` is not set.

    Run by Meltano (which gives plugins MELTANO_PROJECT_ROOT): inside the project, so the
    index travels with it; otherwise a per-user data directory.
    """
    project_root = environ.get("MELTANO_PROJECT_ROOT")
    if project_root:
        return str(Path(project_root) / MELTANO_INDEX_PATH)
    return str(_user_data_dir(environ) / "gtmcli" / INDEX_FILE_NAME)


def _user_data_dir(environ: Mapping[str, str]) -> Path:
    home = Path(environ.get("HOME") or Path.home())
    if sys.platform == "win32":
        return Path(environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    if sys.platform == "darwin":
        return home / "Library" / "Application Support"
    return Path(environ.get("XDG_DATA_HOME") or home / ".local" / "share")


def open_index(location: str) -> SubmissionIndex:
    """The store a `submission_index` setting names: a `postgresql://` URL or a file path."""
    if urlsplit(location).scheme in POSTGRES_SCHEMES:
        # Imported here: the PostgreSQL driver is an extra that SQLite users never need.
        from tap_gtmcli.submit.postgres_index import PostgresIndex  # noqa: PLC0415

        return PostgresIndex(location)
    return SQLiteIndex(location)


@dataclass(frozen=True)
class Intent:
    """A create that was sent and not confirmed: a run stopped before it knew the job."""

    ref: int
    job_type: str
    source_stream: str
    #: Unix time (this machine's clock) just before the last `POST /v1/jobs` was sent.
    sent_at: float
    batch_sha256: str
    #: The 16-byte digests of the items sent, joined, in the order sent.
    digests: bytes

    @property
    def item_count(self) -> int:
        """Items in the create: the `total` its job shows."""
        return len(self.digests) // DIGEST_BYTES

    def digest_list(self) -> list[bytes]:
        """The digests one by one."""
        return split_digests(self.digests)


def split_digests(joined: bytes) -> list[bytes]:
    """16-byte digests from their concatenation."""
    return [joined[start:start + DIGEST_BYTES] for start in range(0, len(joined), DIGEST_BYTES)]


class SubmissionIndex(ABC):
    """Digests of submitted items with their job, type, time and (enrich mode) result."""

    #: The index as named in messages (a URL without its password).
    location: str
    #: The errors of the store's driver, which `_failing` turns into ours.
    _errors: tuple[type[Exception], ...]

    @abstractmethod
    def new_intent(
        self, account: bytes, job_type: str, source_stream: str, *, now: int
    ) -> int:
        """Open an intent for a batch about to be split (not sent yet); its reference."""

    @abstractmethod
    def claim(
        self, digests: Sequence[bytes], *, now: int, since: int, need_results: bool,
        intent: int = 0,
    ) -> Known:
        """The items to skip; every other digest is this process's to submit.

        An item is skipped when it was submitted at `since` or later (and, with
        `need_results`, its result is stored) or, in a shared store, another live
        worker has claimed it or sent it in a create not reconciled yet.
        """

    @abstractmethod
    def mark_sent(
        self, intent: int, *, digests: Sequence[bytes], batch_sha256: str, sent_at: float
    ) -> None:
        """`POST /v1/jobs` of the intent's items is about to be sent (again)."""

    @abstractmethod
    def record(
        self, digests: Sequence[bytes], *, job_id: str, job_type: str, now: int,
        intent: int | None = None,
    ) -> None:
        """GTMCLI confirmed the job holding these items: they count as submitted, and the
        intent (if any) is closed, in one transaction."""

    @abstractmethod
    def record_results(self, results: Sequence[tuple[bytes, bytes]], *, now: int) -> None:
        """Keep the fetched result of each (digest, encoded result)."""

    @abstractmethod
    def release(self, digests: Sequence[bytes], intent: int | None = None) -> None:
        """The create of claimed items certainly made no job: let anyone submit them again."""

    @abstractmethod
    def open_intents(self, account: bytes) -> list[Intent]:
        """The account's intents that were sent and never confirmed by a run now gone.

        They become this run's to reconcile; intents never sent are forgotten.
        """

    @abstractmethod
    def recorded_job_ids(self) -> set[str]:
        """Every job the index recorded (within the window): none can be an intent's."""

    @abstractmethod
    def adopt(self, intent: Intent, job_id: str, *, now: int) -> None:
        """The intent's create made `job_id`: its items count as submitted."""

    @abstractmethod
    def abandon(self, intent: Intent) -> None:
        """No job can be told to be the intent's: forget it, its items are sent again."""

    @abstractmethod
    def longest_window(self, days: int) -> int:
        """Note this run's window; the longest window (days) any run of this index used.

        Entries are kept that long: a run with a shorter window sharing the index (the
        mapper and the target do by default, workers do through PostgreSQL) must not
        delete history that a longer window still counts as submitted.
        """

    @abstractmethod
    def start(self, *, since: int, prune_before: int | None = None) -> None:
        """Forget entries submitted before `prune_before` (default `since`; no run needs
        them), check that the rest can be read, and count items from `since` on."""

    @abstractmethod
    def size_bytes(self) -> int:
        """The space the index takes."""

    @abstractmethod
    def close(self) -> None:
        """Release the file or connection."""

    @contextmanager
    def _failing(self, doing: str) -> Iterator[None]:
        """A driver error in the block stops the run, saying the index could not be
        `doing` ("read", "written") and what that means for the run."""
        try:
            yield
        except self._errors as error:
            raise self._error(doing, error) from error

    def _error(self, doing: str, error: Exception) -> SubmissionIndexError:
        consequence = (
            "The run stops before the STATE of the items it could not record"
            if doing == "written" else "Nothing was submitted with it"
        )
        msg = (
            f"The submission index {self.location} could not be {doing}: {error}. "
            f"{consequence}. Fix or move it away (submission_index names it); "
            "without it, items are submitted again once."
        )
        return SubmissionIndexError(msg)


class SQLiteIndex(SubmissionIndex):
    """The index in a SQLite file, read into memory once per run.

    Each confirmed job is one row holding the 16-byte digests of its items, so recording
    a batch is one insert and pruning deletes whole jobs. At the start the digests of
    the window are read into a set of their first 8 bytes, so a batch is looked up in
    one set intersection (about 60 bytes of memory an item; two different items share a
    prefix with odds of about n in 2^64). Results (enrich mode) live in a WITHOUT ROWID
    table keyed on the digest. Intents are rows of their own, deleted when their job is
    recorded.
    """

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS jobs (
            ref INTEGER PRIMARY KEY,
            submitted_at INTEGER NOT NULL,
            job_id TEXT NOT NULL,
            job_type TEXT NOT NULL,
            digests BLOB NOT NULL
        );
        CREATE TABLE IF NOT EXISTS windows (
            name TEXT PRIMARY KEY,
            days INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS results (
            digest BLOB PRIMARY KEY,
            submitted_at INTEGER NOT NULL,
            result BLOB NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS intents (
            ref INTEGER PRIMARY KEY,
            account BLOB NOT NULL,
            job_type TEXT NOT NULL,
            source_stream TEXT NOT NULL,
            sent_at REAL,
            batch_sha256 TEXT,
            digests BLOB
        );
    """

    _errors = (sqlite3.Error,)

    def __init__(self, path: str) -> None:
        self.location = path
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Used from the background creating thread too, one call at a time.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            raise self._error("opened", error) from error
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            # Commits survive a killed process; a power cut may lose the last ones, which
            # means those items are submitted again once, never that one is lost.
            self._db.execute("PRAGMA synchronous = NORMAL")
            # Checkpoints (the only fsyncs) then come about once per run, not per 4 MB.
            self._db.execute("PRAGMA wal_autocheckpoint = 16384")
            self._db.execute("PRAGMA busy_timeout = 30000")
            self._db.executescript(self.SCHEMA)
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check")]
        except sqlite3.Error as error:
            self._db.close()
            raise self._error("read", error) from error
        if problems != ["ok"]:
            self._db.close()
            raise self._error("read", ValueError("; ".join(problems[:3])))
        #: Digest prefixes of the window read at the start, and of what this run recorded.
        self._seen: set[int] = set()

    def longest_window(self, days: int) -> int:
        """See `SubmissionIndex.longest_window`."""
        with self._failing("read"), self._transaction():
            self._db.execute(
                "INSERT INTO windows VALUES ('longest', ?) ON CONFLICT (name) "
                "DO UPDATE SET days = max(days, excluded.days)", (days,),
            )
            (longest,) = self._db.execute(
                "SELECT days FROM windows WHERE name = 'longest'"
            ).fetchone()
        return int(longest)

    def start(self, *, since: int, prune_before: int | None = None) -> None:
        """Delete what fell out of the longest window, then read the window's digests."""
        with self._failing("read"):
            with self._transaction():
                oldest = since if prune_before is None else prune_before
                self._db.execute("DELETE FROM jobs WHERE submitted_at < ?", (oldest,))
                self._db.execute("DELETE FROM results WHERE submitted_at < ?", (oldest,))
            for (digests,) in self._db.execute(
                "SELECT digests FROM jobs WHERE submitted_at >= ?", (since,)
            ):
                if not isinstance(digests, bytes) or len(digests) % DIGEST_BYTES:
                    raise sqlite3.DatabaseError("a job's list of digests is cut short")
                self._seen.update(_prefixes(digests))

    def new_intent(
        self, account: bytes, job_type: str, source_stream: str, *, now: int
    ) -> int:
        """A row without `sent_at`: nothing is known to be sent yet."""
        with self._failing("written"):
            cursor = self._db.execute(
                "INSERT INTO intents (account, job_type, source_stream) VALUES (?, ?, ?)",
                (account, job_type, source_stream),
            )
        return int(cursor.lastrowid or 0)

    def claim(
        self, digests: Sequence[bytes], *, now: int, since: int, need_results: bool,
        intent: int = 0,
    ) -> Known:
        """The items recorded since the start of the window (with a result when asked)."""
        if need_results:
            return self._results(digests, since)
        prefixes = _prefixes(b"".join(digests))
        hits = self._seen.intersection(prefixes)
        if not hits:
            return {}
        if len(hits) == len(digests):  # an unchanged batch: every item seen
            return dict.fromkeys(digests)
        return {
            digest: None
            for digest, prefix in zip(digests, prefixes, strict=True)
            if prefix in hits
        }

    def _results(self, digests: Sequence[bytes], since: int) -> Known:
        # Enrich mode waits for jobs anyway: one indexed read per item is cheap beside it.
        known: Known = {}
        query = "SELECT result FROM results WHERE digest = ? AND submitted_at >= ?"
        with self._failing("read"):
            for digest in digests:
                row = self._db.execute(query, (digest, since)).fetchone()
                if row is not None:
                    known[digest] = row[0]
        return known

    def mark_sent(
        self, intent: int, *, digests: Sequence[bytes], batch_sha256: str, sent_at: float
    ) -> None:
        """Write what the create holds and when it goes, before it goes."""
        with self._failing("written"):
            self._db.execute(
                "UPDATE intents SET sent_at = ?, batch_sha256 = ?, digests = ? WHERE ref = ?",
                (sent_at, batch_sha256, b"".join(digests), intent),
            )

    def record(
        self, digests: Sequence[bytes], *, job_id: str, job_type: str, now: int,
        intent: int | None = None,
    ) -> None:
        """One row for the job, holding its items' digests; the intent goes with it."""
        joined = b"".join(digests)
        with self._failing("written"), self._transaction():
            self._db.execute(
                "INSERT INTO jobs (submitted_at, job_id, job_type, digests) "
                "VALUES (?, ?, ?, ?)",
                (now, job_id, job_type, joined),
            )
            if intent is not None:
                self._db.execute("DELETE FROM intents WHERE ref = ?", (intent,))
        self._seen.update(_prefixes(joined))

    def record_results(self, results: Sequence[tuple[bytes, bytes]], *, now: int) -> None:
        """Keep results by digest, in one transaction."""
        with self._failing("written"), self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?)",
                ((digest, now, result) for digest, result in sorted(results)),
            )

    def release(self, digests: Sequence[bytes], intent: int | None = None) -> None:
        """Forget the intent: a SQLite index records items only once their job exists."""
        if intent is None:
            return
        with self._failing("written"):
            self._db.execute("DELETE FROM intents WHERE ref = ?", (intent,))

    def open_intents(self, account: bytes) -> list[Intent]:
        """Every sent intent of the account (one run at a time uses a SQLite index)."""
        with self._failing("read"):
            self._db.execute(
                "DELETE FROM intents WHERE account = ? AND sent_at IS NULL", (account,)
            )
            rows = self._db.execute(
                "SELECT ref, job_type, source_stream, sent_at, batch_sha256, digests "
                "FROM intents WHERE account = ? ORDER BY sent_at",
                (account,),
            ).fetchall()
        return [Intent(*row) for row in rows]

    def recorded_job_ids(self) -> set[str]:
        """The jobs table: one row per job of the window."""
        with self._failing("read"):
            rows = self._db.execute("SELECT job_id FROM jobs").fetchall()
        return {row[0] for row in rows}

    def adopt(self, intent: Intent, job_id: str, *, now: int) -> None:
        """Record the intent's items under the job found for it."""
        self.record(
            intent.digest_list(), job_id=job_id, job_type=intent.job_type, now=now,
            intent=intent.ref,
        )

    def abandon(self, intent: Intent) -> None:
        """Delete the intent: its items were never recorded."""
        self.release([], intent.ref)

    def size_bytes(self) -> int:
        """Pages in use, times the page size."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * page_size)

    def close(self) -> None:
        """Close the file (WAL content is checkpointed into it)."""
        self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


def _prefixes(joined: bytes) -> array[int]:
    """The first 8 bytes of each 16-byte digest in `joined`, as integers."""
    return array("q", joined)[::2]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
