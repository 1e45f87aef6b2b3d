"""The submission index: which items an account sent to GTMCLI, when, and in which job.

The rule it keeps: an item is known only once GTMCLI confirmed the job holding it, and
only for the account that sent it. Entries are 16-byte digests of the normalised item,
keyed by a fingerprint of the API URL and key (`account_secret`): the index holds no
email, name or key, two accounts (or the sandbox and production) never share an entry,
and a stolen index cannot be matched against a list of emails without the API key.

Two stores keep the same interface. `SQLiteIndex` (one machine, one run at a time) is a
file holding one row per confirmed job with its items' digests, read into memory once
per run, so a batch costs one insert and one set lookup. `PostgresIndex` is shared by
several workers: `claim` inserts the batch's digests
before the job is created (`INSERT ... ON CONFLICT`), so of two mappers running at once
over the same items only one submits each; a claim whose create fails is released, and a
claim whose session died (its backend is gone from `pg_stat_activity`) may be taken over.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sqlite3
import sys
from abc import ABC, abstractmethod
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tap_gtmcli.api.errors import SubmissionIndexError

DIGEST_BYTES = 16
POSTGRES_TABLE = "gtmcli_submission_index"
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
        return PostgresIndex(location)
    return SQLiteIndex(location)


class SubmissionIndex(ABC):
    """Digests of submitted items with their job, type, time and (enrich mode) result."""

    #: The index as named in messages (a URL without its password).
    location: str

    @abstractmethod
    def claim(self, digests: Sequence[bytes], *, now: int, since: int, need_results: bool) -> Known:
        """The items to skip; every other digest is this process's to submit.

        An item is skipped when it was submitted at `since` or later (and, with
        `need_results`, its result is stored) or, in a shared store, another live
        worker has claimed it.
        """

    @abstractmethod
    def record(self, digests: Sequence[bytes], *, job_id: str, job_type: str, now: int) -> None:
        """GTMCLI confirmed the job holding these items: they count as submitted."""

    @abstractmethod
    def record_results(self, results: Sequence[tuple[bytes, bytes]], *, now: int) -> None:
        """Keep the fetched result of each (digest, encoded result)."""

    @abstractmethod
    def release(self, digests: Sequence[bytes]) -> None:
        """The create of claimed items failed: let anyone submit them again."""

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
    table keyed on the digest.
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
    """

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
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT INTO windows VALUES ('longest', ?) ON CONFLICT (name) "
                    "DO UPDATE SET days = max(days, excluded.days)", (days,),
                )
                (longest,) = self._db.execute(
                    "SELECT days FROM windows WHERE name = 'longest'"
                ).fetchone()
        except sqlite3.Error as error:
            raise self._error("read", error) from error
        return int(longest)

    def start(self, *, since: int, prune_before: int | None = None) -> None:
        """Delete what fell out of the longest window, then read the window's digests."""
        try:
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
        except sqlite3.Error as error:
            raise self._error("read", error) from error

    def claim(self, digests: Sequence[bytes], *, now: int, since: int, need_results: bool) -> Known:
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
        try:
            for digest in digests:
                row = self._db.execute(query, (digest, since)).fetchone()
                if row is not None:
                    known[digest] = row[0]
        except sqlite3.Error as error:
            raise self._error("read", error) from error
        return known

    def record(self, digests: Sequence[bytes], *, job_id: str, job_type: str, now: int) -> None:
        """One row for the job, holding its items' digests."""
        joined = b"".join(digests)
        try:
            self._db.execute(
                "INSERT INTO jobs (submitted_at, job_id, job_type, digests) VALUES (?, ?, ?, ?)",
                (now, job_id, job_type, joined),
            )
        except sqlite3.Error as error:
            raise self._error("written", error) from error
        self._seen.update(_prefixes(joined))

    def record_results(self, results: Sequence[tuple[bytes, bytes]], *, now: int) -> None:
        """Keep results by digest, in one transaction."""
        try:
            with self._transaction():
                self._db.executemany(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?)",
                    ((digest, now, result) for digest, result in sorted(results)),
                )
        except sqlite3.Error as error:
            raise self._error("written", error) from error

    def release(self, digests: Sequence[bytes]) -> None:
        """Nothing to release: a SQLite index records items only once their job exists."""

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


# Key of the advisory lock held while the index's tables are created ("gtmcli" in ASCII).
SCHEMA_LOCK = 0x67746D636C69


class PostgresIndex(SubmissionIndex):
    """The index in a PostgreSQL table shared by every worker that names it."""

    def __init__(self, url: str) -> None:
        self.location = _without_password(url)
        # Imported here so that SQLite users never need the driver.
        psycopg = importlib.import_module("psycopg")
        self._errors: tuple[type[Exception], ...] = (psycopg.Error,)
        try:
            self._db: Any = psycopg.connect(url, autocommit=True, connect_timeout=30)
            with self._db.transaction():
                # CREATE TABLE IF NOT EXISTS is not safe against itself: two workers
                # opening a new database at once both try to create the row type, and
                # one fails on pg_type's unique index. The lock takes them in turn.
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS gtmcli_submission_index ("
                    "digest bytea PRIMARY KEY, submitted_at bigint NOT NULL, "
                    "job_id text, job_type text, result bytea, "
                    "claimed_by integer, claimed_session timestamptz)"
                )
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS gtmcli_submission_index_windows ("
                    "name text PRIMARY KEY, days integer NOT NULL)"
                )
            self._session = self._db.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
        except psycopg.Error as error:
            raise self._error("opened", error) from error

    def claim(self, digests: Sequence[bytes], *, now: int, since: int, need_results: bool) -> Known:
        """Insert claims; the digests not claimed are recent, or claimed by a live worker."""
        pid, session = self._session
        # A claim (job_id NULL) of a session that is gone will never be confirmed.
        sql = """
            INSERT INTO gtmcli_submission_index AS t
                (digest, submitted_at, claimed_by, claimed_session)
            SELECT d, %(now)s, %(pid)s, %(session)s
            FROM unnest(%(digests)s::bytea[]) AS d ORDER BY d
            ON CONFLICT (digest) DO UPDATE SET
                submitted_at = EXCLUDED.submitted_at, job_id = NULL, job_type = NULL,
                result = NULL, claimed_by = EXCLUDED.claimed_by,
                claimed_session = EXCLUDED.claimed_session
            WHERE t.submitted_at < %(since)s
               OR (%(need_results)s AND t.result IS NULL)
               OR (t.job_id IS NULL AND NOT EXISTS (
                    SELECT 1 FROM pg_stat_activity a
                    WHERE a.pid = t.claimed_by AND a.backend_start = t.claimed_session))
            RETURNING digest
        """
        try:
            claimed = {
                bytes(row[0])
                for row in self._db.execute(
                    sql,
                    {"now": now, "pid": pid, "session": session, "digests": list(digests),
                     "since": since, "need_results": need_results},
                )
            }
            known: Known = dict.fromkeys(digest for digest in digests if digest not in claimed)
            if need_results and known:
                rows = self._db.execute(
                    "SELECT digest, result FROM gtmcli_submission_index "
                    "WHERE digest = ANY(%s) AND result IS NOT NULL",
                    (list(known),),
                )
                known.update((bytes(digest), bytes(result)) for digest, result in rows)
        except self._errors as error:
            raise self._error("read", error) from error
        return known

    def record(self, digests: Sequence[bytes], *, job_id: str, job_type: str, now: int) -> None:
        """Confirm this worker's claims with the job."""
        try:
            self._db.execute(
                "UPDATE gtmcli_submission_index SET job_id = %s, job_type = %s, submitted_at = %s "
                "WHERE digest = ANY(%s)",
                (job_id, job_type, now, list(digests)),
            )
        except self._errors as error:
            raise self._error("written", error) from error

    def record_results(self, results: Sequence[tuple[bytes, bytes]], *, now: int) -> None:
        """Attach results to recorded items in one statement."""
        try:
            self._db.execute(
                "UPDATE gtmcli_submission_index AS t SET result = v.r "
                "FROM unnest(%s::bytea[], %s::bytea[]) AS v(d, r) WHERE t.digest = v.d",
                ([digest for digest, _ in results], [result for _, result in results]),
            )
        except self._errors as error:
            raise self._error("written", error) from error

    def release(self, digests: Sequence[bytes]) -> None:
        """Delete this worker's unconfirmed claims of these items."""
        pid, session = self._session
        try:
            self._db.execute(
                "DELETE FROM gtmcli_submission_index WHERE digest = ANY(%s) AND job_id IS NULL "
                "AND claimed_by = %s AND claimed_session = %s",
                (list(digests), pid, session),
            )
        except self._errors as error:
            raise self._error("written", error) from error

    def longest_window(self, days: int) -> int:
        """See `SubmissionIndex.longest_window`."""
        try:
            row = self._db.execute(
                "INSERT INTO gtmcli_submission_index_windows AS w VALUES ('longest', %s) "
                "ON CONFLICT (name) DO UPDATE SET days = GREATEST(w.days, EXCLUDED.days) "
                "RETURNING days",
                (days,),
            ).fetchone()
        except self._errors as error:
            raise self._error("read", error) from error
        return int(row[0])

    def start(self, *, since: int, prune_before: int | None = None) -> None:
        """Delete entries (and dead claims) older than `prune_before` (default `since`)."""
        try:
            self._db.execute(
                "DELETE FROM gtmcli_submission_index WHERE submitted_at < %s",
                (since if prune_before is None else prune_before,),
            )
        except self._errors as error:
            raise self._error("written", error) from error

    def size_bytes(self) -> int:
        """The table with its primary key index."""
        row = self._db.execute("SELECT pg_total_relation_size(%s)", (POSTGRES_TABLE,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the connection."""
        self._db.close()


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
