"""The submission index in PostgreSQL, shared by every worker that names it.

`claim` inserts the batch's digests before the job is created (`INSERT ... ON
CONFLICT`), so of two mappers running at once over the same items only one submits
each. Each claimed row points at its batch's intent; the job is recorded by closing that
one intent row (not by updating every item's row), so a batch of 100,000 items costs one
insert statement and one single-row update. Digests travel as one joined `bytea` that
the server cuts up: adapting a Python list of 100,000 `bytes` costs seconds.

A claim whose create certainly failed is released. A claim of a worker whose session
died (its backend is gone from `pg_stat_activity`) may be taken over, unless that
worker had sent the create: then its intent is reconciled first (by the next worker of
the account to start), because the job may exist.

psycopg is an extra (`pip install 'tap-gtmcli[postgres]'`): only this store needs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tap_gtmcli.api.errors import SubmissionIndexError
from tap_gtmcli.submit.submission_index import (
    Intent,
    Known,
    SubmissionIndex,
    split_digests,
)

POSTGRES_TABLE = "gtmcli_submission_index"
INTENTS_TABLE = "gtmcli_submission_intents"
#: Key of the advisory lock held while the index's tables are created ("gtmcli" in ASCII).
SCHEMA_LOCK = 0x67746D636C69
INSTALL_HINT = "pip install 'tap-gtmcli[postgres]'"

#: Statements below cut a joined `bytea` parameter of 16-byte digests (DIGEST_BYTES) into
#: rows with `substr` over `generate_series`.


def load_driver() -> Any:
    """psycopg, or an error naming the setting and the extra that installs it."""
    try:
        return importlib.import_module("psycopg")
    except ImportError as error:
        msg = (
            "submission_index is a postgresql:// URL, but the PostgreSQL driver (psycopg) "
            f"is not installed: {error}. Install the extra: {INSTALL_HINT} "
            "(or leave submission_index unset for the SQLite file)."
        )
        raise SubmissionIndexError(msg) from error


class PostgresIndex(SubmissionIndex):
    """The index in two PostgreSQL tables: item claims, and the intents they belong to."""

    def __init__(self, url: str) -> None:
        self.location = _without_password(url)
        psycopg = load_driver()
        self._errors: tuple[type[Exception], ...] = (psycopg.Error,)
        self._unique_violation: type[Exception] = psycopg.errors.UniqueViolation
        try:
            self._db: Any = psycopg.connect(url, autocommit=True, connect_timeout=30)
            if self._tables_missing():
                self._create_tables()
            self._session = self._db.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
        except psycopg.Error as error:
            raise self._error("opened", error) from error

    def _tables_missing(self) -> bool:
        """Whether a table or column is missing (only then is DDL run: a worker whose role
        does not own the tables may use them, not alter them)."""
        row = self._db.execute(
            "SELECT to_regclass('gtmcli_submission_intents') IS NULL "
            "OR to_regclass('gtmcli_submission_index_windows') IS NULL "
            "OR NOT EXISTS (SELECT 1 FROM information_schema.columns "
            "WHERE table_name = 'gtmcli_submission_index' AND column_name = 'intent')"
        ).fetchone()
        return bool(row[0])

    def _create_tables(self) -> None:
        with self._db.transaction():
            # CREATE TABLE IF NOT EXISTS is not safe against itself: two workers opening a
            # new database at once both try to create the row type, and one fails on
            # pg_type's unique index. The lock takes them in turn.
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS gtmcli_submission_index ("
                "digest bytea PRIMARY KEY, submitted_at bigint NOT NULL, "
                "job_id text, job_type text, result bytea, "
                "claimed_by integer, claimed_session timestamptz)"
            )
            # Indexes made before intents existed confirmed each row with its job_id.
            self._db.execute(
                "ALTER TABLE gtmcli_submission_index ADD COLUMN IF NOT EXISTS intent bigint"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS gtmcli_submission_intents ("
                "ref bigserial PRIMARY KEY, account bytea NOT NULL, job_type text NOT NULL, "
                "source_stream text NOT NULL, claimed_by integer NOT NULL, "
                "claimed_session timestamptz NOT NULL, sent_at double precision, "
                "batch_sha256 text, digests bytea, job_id text, opened_at bigint NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS gtmcli_submission_index_windows ("
                "name text PRIMARY KEY, days integer NOT NULL)"
            )

    def new_intent(
        self, account: bytes, job_type: str, source_stream: str, *, now: int
    ) -> int:
        """A row owned by this session, not sent yet."""
        pid, session = self._session
        with self._failing("written"):
            row = self._db.execute(
                "INSERT INTO gtmcli_submission_intents "
                "(account, job_type, source_stream, claimed_by, claimed_session, opened_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING ref",
                (account, job_type, source_stream, pid, session, now),
            ).fetchone()
        return int(row[0])

    def claim(
        self, digests: Sequence[bytes], *, now: int, since: int, need_results: bool,
        intent: int = 0,
    ) -> Known:
        """Insert claims; the digests not claimed are recent, or held by another worker.

        A row is taken over when it fell out of the window, when its result is wanted
        and missing, or when it is unconfirmed, its worker's session is gone and its
        intent was never sent (a sent one waits for the reconciliation).
        """
        pid, session = self._session
        sql = """
            WITH claimed AS (
                INSERT INTO gtmcli_submission_index AS t
                    (digest, submitted_at, claimed_by, claimed_session, intent)
                SELECT substr(%(joined)s::bytea, i * 16 + 1, 16), %(now)s, %(pid)s,
                    %(session)s, %(intent)s
                FROM generate_series(0, length(%(joined)s::bytea) / 16 - 1) AS i
                ORDER BY 1
                ON CONFLICT (digest) DO UPDATE SET
                    submitted_at = EXCLUDED.submitted_at, job_id = NULL, job_type = NULL,
                    result = NULL, claimed_by = EXCLUDED.claimed_by,
                    claimed_session = EXCLUDED.claimed_session, intent = EXCLUDED.intent
                WHERE t.submitted_at < %(since)s
                   OR (%(need_results)s AND t.result IS NULL)
                   OR (t.job_id IS NULL
                       AND NOT EXISTS (
                           SELECT 1 FROM gtmcli_submission_intents i WHERE i.ref = t.intent
                           AND (i.job_id IS NOT NULL OR i.sent_at IS NOT NULL))
                       -- Last: pg_stat_activity costs most (conditions run in this order).
                       AND NOT EXISTS (
                           SELECT 1 FROM pg_stat_activity a
                           WHERE a.pid = t.claimed_by AND a.backend_start = t.claimed_session))
                RETURNING digest
            )
            SELECT count(*), string_agg(digest, ''::bytea) FROM claimed
        """
        joined = b"".join(digests)
        params = {"now": now, "pid": pid, "session": session, "joined": joined,
                  "since": since, "need_results": need_results, "intent": intent}
        if self._claim_all_new(params):
            return {}
        with self._failing("read"):
            count, claimed_joined = self._db.execute(
                sql, params, binary=True
            ).fetchone()
            if count == len(digests):
                return {}
            claimed = set(split_digests(bytes(claimed_joined or b"")))
            known: Known = dict.fromkeys(digest for digest in digests if digest not in claimed)
            if need_results and known:
                rows = self._db.execute(
                    "SELECT digest, result FROM gtmcli_submission_index "
                    "WHERE digest IN (SELECT substr(%(joined)s::bytea, i * 16 + 1, 16) "
                    "FROM generate_series(0, length(%(joined)s::bytea) / 16 - 1) AS i) "
                    "AND result IS NOT NULL",
                    {"joined": b"".join(known)},
                    binary=True,
                )
                known.update((bytes(digest), bytes(result)) for digest, result in rows)
        return known

    def _claim_all_new(self, params: dict[str, Any]) -> bool:
        """Claim the batch with a plain insert, when no item of it is in the index yet.

        Half the cost of `INSERT ... ON CONFLICT` per row, which matters for the first
        run over a list. Any item already there fails the statement (nothing is inserted,
        and it fails early in a batch that holds many): `claim` then takes the long way.
        """
        try:
            self._db.execute(
                "INSERT INTO gtmcli_submission_index "
                "(digest, submitted_at, claimed_by, claimed_session, intent) "
                "SELECT substr(%(joined)s::bytea, i * 16 + 1, 16), %(now)s, %(pid)s, "
                "%(session)s, %(intent)s "
                "FROM generate_series(0, length(%(joined)s::bytea) / 16 - 1) AS i ORDER BY 1",
                params,
                binary=True,
            )
        except self._unique_violation:
            return False
        except self._errors as error:
            raise self._error("read", error) from error
        return True

    def mark_sent(
        self, intent: int, *, digests: Sequence[bytes], batch_sha256: str, sent_at: float
    ) -> None:
        """Write what the create holds and when it goes, before it goes."""
        with self._failing("written"):
            self._db.execute(
                "UPDATE gtmcli_submission_intents SET sent_at = %s, batch_sha256 = %s, "
                "digests = %s WHERE ref = %s",
                (sent_at, batch_sha256, b"".join(digests), intent),
            )

    def record(
        self, digests: Sequence[bytes], *, job_id: str, job_type: str, now: int,
        intent: int | None = None,
    ) -> None:
        """Close the intent with the job: every row claimed under it is confirmed."""
        with self._failing("written"):
            if intent is not None:
                self._db.execute(
                    "UPDATE gtmcli_submission_intents SET job_id = %s WHERE ref = %s",
                    (job_id, intent),
                )
                return
            self._db.execute(
                "UPDATE gtmcli_submission_index SET job_id = %(job_id)s, job_type = %(type)s, "
                "submitted_at = %(now)s WHERE digest IN ("
                "SELECT substr(%(joined)s::bytea, i * 16 + 1, 16) "
                "FROM generate_series(0, length(%(joined)s::bytea) / 16 - 1) AS i)",
                {"job_id": job_id, "type": job_type, "now": now, "joined": b"".join(digests)},
                binary=True,
            )

    def record_results(self, results: Sequence[tuple[bytes, bytes]], *, now: int) -> None:
        """Attach results to recorded items in one statement."""
        with self._failing("written"):
            self._db.execute(
                "UPDATE gtmcli_submission_index AS t SET result = v.r "
                "FROM unnest(%s::bytea[], %s::bytea[]) AS v(d, r) WHERE t.digest = v.d",
                ([digest for digest, _ in results], [result for _, result in results]),
            )

    def release(self, digests: Sequence[bytes], intent: int | None = None) -> None:
        """Delete this worker's unconfirmed claims of these items, and the intent."""
        pid, session = self._session
        with self._failing("written"), self._db.transaction():
            self._db.execute(
                "DELETE FROM gtmcli_submission_index WHERE digest IN "
                "(SELECT substr(%(joined)s::bytea, i * 16 + 1, 16) "
                "FROM generate_series(0, length(%(joined)s::bytea) / 16 - 1) AS i) "
                "AND job_id IS NULL "
                "AND claimed_by = %(pid)s AND claimed_session = %(session)s",
                {"joined": b"".join(digests), "pid": pid, "session": session},
                binary=True,
            )
            if intent is not None:
                self._db.execute(
                    "DELETE FROM gtmcli_submission_intents WHERE ref = %s", (intent,)
                )

    def open_intents(self, account: bytes) -> list[Intent]:
        """Take over the sent, unconfirmed intents of the account's dead sessions."""
        pid, session = self._session
        with self._failing("read"), self._db.transaction():
            self._db.execute(
                "DELETE FROM gtmcli_submission_intents i WHERE account = %s "
                "AND sent_at IS NULL AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a "
                "WHERE a.pid = i.claimed_by AND a.backend_start = i.claimed_session)",
                (account,),
            )
            rows = self._db.execute(
                "UPDATE gtmcli_submission_intents i SET claimed_by = %s, "
                "claimed_session = %s WHERE account = %s AND job_id IS NULL "
                "AND sent_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a "
                "WHERE a.pid = i.claimed_by AND a.backend_start = i.claimed_session) "
                "RETURNING ref, job_type, source_stream, sent_at, batch_sha256, digests",
                (pid, session, account),
            ).fetchall()
        intents = [
            Intent(int(ref), job_type, stream, float(sent_at), sha or "", bytes(digests or b""))
            for ref, job_type, stream, sent_at, sha, digests in rows
        ]
        return sorted(intents, key=lambda intent: intent.sent_at)

    def recorded_job_ids(self) -> set[str]:
        """Jobs of the closed intents (any account's: job ids never collide)."""
        with self._failing("read"):
            rows = self._db.execute(
                "SELECT job_id FROM gtmcli_submission_intents WHERE job_id IS NOT NULL"
            ).fetchall()
        return {row[0] for row in rows}

    def adopt(self, intent: Intent, job_id: str, *, now: int) -> None:
        """Close the intent with the job found for it."""
        self.record([], job_id=job_id, job_type=intent.job_type, now=now, intent=intent.ref)

    def abandon(self, intent: Intent) -> None:
        """Delete the intent and the claims made under it."""
        with self._failing("written"), self._db.transaction():
            self._db.execute(
                "DELETE FROM gtmcli_submission_index WHERE digest IN "
                "(SELECT substr(%(joined)s::bytea, i * 16 + 1, 16) "
                "FROM generate_series(0, length(%(joined)s::bytea) / 16 - 1) AS i) "
                "AND intent = %(ref)s AND job_id IS NULL",
                {"joined": intent.digests, "ref": intent.ref},
                binary=True,
            )
            self._db.execute(
                "DELETE FROM gtmcli_submission_intents WHERE ref = %s", (intent.ref,)
            )

    def longest_window(self, days: int) -> int:
        """See `SubmissionIndex.longest_window`."""
        with self._failing("read"):
            row = self._db.execute(
                "INSERT INTO gtmcli_submission_index_windows AS w VALUES ('longest', %s) "
                "ON CONFLICT (name) DO UPDATE SET days = GREATEST(w.days, EXCLUDED.days) "
                "RETURNING days",
                (days,),
            ).fetchone()
        return int(row[0])

    def start(self, *, since: int, prune_before: int | None = None) -> None:
        """Delete entries (and dead claims) older than `prune_before` (default `since`),
        and the closed intents opened before it (their rows are gone with them)."""
        oldest = since if prune_before is None else prune_before
        with self._failing("written"):
            self._db.execute(
                "DELETE FROM gtmcli_submission_index WHERE submitted_at < %s", (oldest,)
            )
            self._db.execute(
                "DELETE FROM gtmcli_submission_intents WHERE job_id IS NOT NULL "
                "AND opened_at < %s",
                (oldest,),
            )

    def size_bytes(self) -> int:
        """The two tables with their indexes."""
        row = self._db.execute(
            "SELECT pg_total_relation_size(%s) + pg_total_relation_size(%s)",
            (POSTGRES_TABLE, INTENTS_TABLE),
        ).fetchone()
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

