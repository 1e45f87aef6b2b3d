"""The submission index shared in a real PostgreSQL on loopback (the session's server).

Each test gets a database of its own on that server, owned by a role that is not a
superuser (as workers' roles are): what one worker may see of another's session in
`pg_stat_activity` is what the README's "one role or `pg_read_all_stats`" is about.
What was paid for is counted in the sandbox's jobs.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.api.errors import SubmissionFailedError
from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tap_gtmcli.submit.postgres_index import SCHEMA_LOCK, PostgresIndex
from tests.helpers.keys import API_KEY
from tests.helpers.mapper_runs import MAPPER, run_mapper, run_with_clock
from tests.helpers.postgres import PostgresServer
from tests.helpers.sandboxes import job_ids, job_items, sandbox_jobs
from tests.helpers.singer import contacts

DAY = 86_400.0


def new_role(postgres_server: PostgresServer, *grants: str) -> str:
    """A login role that is not a superuser (trust authentication: no password)."""
    role = f"worker_{uuid.uuid4().hex[:10]}"
    postgres_server.query(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
    for grant in grants:
        postgres_server.query(f"GRANT {grant} TO {role}")
    return role


@pytest.fixture
def database(postgres_server: PostgresServer) -> str:
    """A fresh database on the session's PostgreSQL, owned by a role that is no superuser."""
    name = f"index_{uuid.uuid4().hex[:12]}"
    owner = new_role(postgres_server)
    postgres_server.query(f"CREATE DATABASE {name} OWNER {owner}")
    return f"{owner}/{name}"


def url_as(postgres_server: PostgresServer, database: str, role: str | None = None) -> str:
    owner, name = database.split("/")
    return f"postgresql://{role or owner}@127.0.0.1:{postgres_server.port}/{name}"


@pytest.fixture
def index_url(postgres_server: PostgresServer, database: str) -> str:
    """The fresh database as a `postgresql://` URL, connecting as its owner."""
    return url_as(postgres_server, database)


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    # Slow answers, so that the two mappers' creates overlap in time.
    config = SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0, latency_ms=100)
    with SandboxServer(config) as server:
        yield server


def contacts_text(numbers: list[int]) -> str:
    lines = [{"type": "SCHEMA", "stream": "contacts", "key_properties": ["id"],
              "schema": {"type": "object", "properties": {"id": {"type": "integer"},
                                                          "email": {"type": "string"}}}}]
    for position, number in enumerate(numbers):
        lines.append({"type": "RECORD", "stream": "contacts",
                      "record": {"id": number, "email": f"p{number}@example.com"}})
        if position % 100 == 99:
            lines.append({"type": "STATE", "value": {"position": position}})
    return "".join(json.dumps(line) + "\n" for line in lines)


def received(server: SandboxServer) -> Counter[str]:
    """How many times the sandbox received each email, over all its jobs."""
    return Counter(item["email"] for job in sandbox_jobs(server)
                   for item in job_items(server, job["id"]))


def index_counts(postgres_server: PostgresServer, database: str) -> list[list[str]]:
    """(entries, entries confirmed with a job) of the index in one database."""
    return postgres_server.query(
        "SELECT count(*), count(coalesce(t.job_id, i.job_id)) FROM gtmcli_submission_index t "
        "LEFT JOIN gtmcli_submission_intents i ON i.ref = t.intent", database=database)


def test_two_mappers_sharing_an_index_submit_each_item_once(
    sandbox: SandboxServer, index_url: str, tmp_path: Path
) -> None:
    config = {"api_key": API_KEY, "api_url": sandbox.url, "batch_size": 100,
              "request_timeout": 10, "submission_index": index_url}
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    # Both start with the same 2,000 contacts, so their claims race batch by batch.
    first = [*range(2000), *range(2000, 3000)]
    second = [*range(2000), *range(3000, 4000)]
    inputs = []
    for name, numbers in (("first", first), ("second", second)):
        inputs.append(tmp_path / f"{name}.singer")
        inputs[-1].write_text(contacts_text(numbers))
    # Input from files, so both mappers read at once (communicate() would feed one by one).
    processes = [
        subprocess.Popen([MAPPER, "--config", str(config_path), "--input", str(path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for path in inputs
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outputs = list(pool.map(lambda process: process.communicate(timeout=180), processes))

    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()[-2000:]
        assert API_KEY.encode() not in stdout + stderr
        assert API_KEY.split("_", 2)[-1].encode() not in stdout + stderr
    emitted = [[json.loads(line) for line in stdout.splitlines()] for stdout, _ in outputs]
    passed = [sum(m["type"] == "RECORD" and m["stream"] == "contacts" for m in out)
              for out in emitted]
    assert passed == [3000, 3000]
    counts = received(sandbox)
    assert set(counts) == {f"p{number}@example.com" for number in range(4000)}
    assert max(counts.values()) == 1, [email for email, n in counts.items() if n > 1][:5]
    skipped = [sum(m["record"]["skipped_item_count"] for m in out
                   if m["type"] == "RECORD" and m["stream"] == "gtmcli_submissions")
               for out in emitted]
    assert sum(skipped) == 2000  # the overlap: each item skipped by one of the two
    # Both skipped part of it: they really ran at once, each winning some claims.
    assert min(skipped) > 0, skipped


def test_a_failed_create_releases_its_claims(
    sandbox: SandboxServer, index_url: str, postgres_server: PostgresServer
) -> None:
    config = {"api_url": sandbox.url, "api_key": API_KEY, "submission_index": index_url,
              "batch_size": 10, "request_timeout": 5}
    messages = [json.loads(line) for line in contacts_text(list(range(25))).splitlines()]
    # The second create is refused for want of credits: it certainly made no job.
    sandbox.add_fault_rules([
        {"method": "POST", "path_prefix": "/v1/jobs", "body": "slow", "delay": 0, "count": 1},
        {"method": "POST", "path_prefix": "/v1/jobs", "status": 402, "count": 1},
    ])
    with pytest.raises(SubmissionFailedError, match="402") as failure:
        run_mapper(config, messages)
    failed_output = [run_mapper.last_output, str(failure.value)]  # type: ignore[attr-defined]
    database = index_url.rsplit("/", 1)[1]
    first_jobs = {job_id: items for job_id, items in jobs_with_items(sandbox).items()}
    assert [sorted(items) for items in first_jobs.values()] == [
        sorted(f"p{number}@example.com" for number in range(10))
    ]
    # The first batch's job exists and is recorded; the refused batch left no claim.
    assert index_counts(postgres_server, database) == [["10", "10"]]

    out = run_mapper(config, messages)
    for output in (failed_output, out):
        assert API_KEY not in json.dumps(output)
    resent = [email for job_id, items in jobs_with_items(sandbox).items()
              if job_id not in first_jobs for email in items]
    assert sorted(resent) == sorted(f"p{number}@example.com" for number in range(10, 25))
    assert index_counts(postgres_server, database) == [["25", "25"]]


def jobs_with_items(server: SandboxServer) -> dict[str, list[str]]:
    """Each job's emails, oldest job first."""
    return {job["id"]: [item["email"] for item in job_items(server, job["id"])]
            for job in sandbox_jobs(server)}


def test_claims_of_a_live_worker_hold_and_of_a_dead_one_lapse(index_url: str) -> None:
    digests = [bytes([number]) * 16 for number in range(5)]
    now, since = 2_000_000_000, 1_000_000_000
    worker = PostgresIndex(index_url)
    other = PostgresIndex(index_url)
    try:
        assert worker.claim(digests, now=now, since=since, need_results=False) == {}
        # Claimed by a live worker: another skips them.
        assert set(other.claim(digests, now=now, since=since, need_results=False)) == set(
            digests
        )
        worker.close()  # its session ends, as when the process is killed
        assert other.claim(digests, now=now, since=since, need_results=False) == {}
        other.record(digests, job_id="job_1", job_type="validate", now=now)
        # Confirmed entries hold until they fall out of the window.
        late = PostgresIndex(index_url)
        try:
            assert set(late.claim(digests, now=now, since=since, need_results=False)) == set(
                digests
            )
            assert late.claim(digests, now=now, since=now + 1, need_results=False) == {}
        finally:
            late.close()
    finally:
        other.close()


def test_workers_opening_a_new_database_at_once_take_its_creation_in_turn(
    index_url: str, postgres_server: PostgresServer
) -> None:
    # CI once saw two mappers race on CREATE TABLE IF NOT EXISTS in a new database:
    # one failed on pg_type's unique index. Creation now waits for an advisory lock;
    # holding that lock here lines every opener up behind it, and they all open.
    import psycopg

    database = index_url.rsplit("/", 1)[1]
    openers = 6
    with psycopg.connect(index_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        with ThreadPoolExecutor(openers) as pool:
            opening = [pool.submit(PostgresIndex, index_url) for _ in range(openers)]
            waiting = 0
            for _ in range(600):  # up to a minute for every opener to queue at the lock
                waiting = int(postgres_server.query(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND NOT granted", database)[0][0])
                if waiting == openers:
                    break
                threading.Event().wait(0.1)
            assert waiting == openers
            assert not any(future.done() for future in opening)
            holder.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))
            indexes = [future.result(timeout=60) for future in opening]
    for index in indexes:
        index.close()
    assert index_counts(postgres_server, database) == [["0", "0"]]


def test_the_url_password_stays_out_of_messages(postgres_server: PostgresServer) -> None:
    url = f"postgresql://postgres:hunter2@127.0.0.1:{postgres_server.port}/no_such_db"
    with pytest.raises(SubmissionFailedError) as caught:
        PostgresIndex(url)
    message = str(caught.value)
    assert "no_such_db" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("second_role", "claim_holds"),
    [("same role", True), ("pg_read_all_stats", True), ("another role", False)],
)
def test_a_live_claim_holds_for_one_role_or_pg_read_all_stats(
    postgres_server: PostgresServer, database: str, second_role: str, claim_holds: bool
) -> None:
    """README: workers must see each other's sessions in `pg_stat_activity`. Without
    that (another role, no `pg_read_all_stats`), a live worker's claim looks dead."""
    digests = [bytes([number]) * 16 for number in range(5)]
    now, since = 2_000_000_000, 1_000_000_000
    worker = PostgresIndex(url_as(postgres_server, database))  # creates the tables
    role = None
    if second_role != "same role":
        grants = ("pg_read_all_stats",) if second_role == "pg_read_all_stats" else ()
        role = new_role(postgres_server, *grants)
        name = database.split("/")[1]
        postgres_server.query(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}; "
            f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}", name)
    other = PostgresIndex(url_as(postgres_server, database, role))
    try:
        assert worker.claim(digests, now=now, since=since, need_results=False) == {}
        skipped = other.claim(digests, now=now, since=since, need_results=False)
        assert (set(skipped) == set(digests)) is claim_holds
        assert (skipped == {}) is not claim_holds
    finally:
        worker.close()
        other.close()


def test_the_longest_window_is_kept_in_postgresql(database: str, index_url: str) -> None:
    """The PostgreSQL path of `longest_window`: a 1-day run sharing the index with 30-day
    runs prunes nothing they still count (the SQLite twin is in tests/mapper)."""
    config = SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0)
    with SandboxServer(config) as server:
        now = 1_900_000_000.0
        run_with_clock(server, contacts(20), lambda: now, submission_index=index_url)
        before = job_ids(server)
        run_with_clock(server, contacts(1), lambda: now + 10 * DAY,
                       submission_index=index_url, resubmit_after_days=1)
        resent = job_ids(server) - before
        again = run_with_clock(server, contacts(20), lambda: now + 10 * DAY + 60,
                               submission_index=index_url)
        assert len(resent) == 1
        assert job_ids(server) - before == resent  # the 30-day run sent nothing
        ledger = [m["record"] for m in again
                  if m["type"] == "RECORD" and m["stream"] == "gtmcli_submissions"]
        assert [row["skipped_item_count"] for row in ledger] == [20]
        # Past 30 days the same index lets every item go again, once.
        run_with_clock(server, contacts(20), lambda: now + 31 * DAY, submission_index=index_url)
        assert len(job_ids(server) - before - resent) == 1


def test_a_mapper_killed_mid_create_in_postgresql_has_its_job_adopted(
    index_url: str, tmp_path: Path
) -> None:
    """SIGKILL while GTMCLI works on a create, with the shared index: the job appears
    after the kill, and the next run finds it instead of paying for the batch again.

    (A kill once the answer is in cannot be placed with a lock here: the index write is
    one statement, which PostgreSQL completes even when its client has died.)
    """
    config = SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0)
    with SandboxServer(config) as server:
        settings = {"api_key": API_KEY, "api_url": server.url, "batch_size": 100,
                    "request_timeout": 2, "submission_index": index_url}
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps(settings))
        text = contacts_text(list(range(300)))
        # The second create waits a second at the server before it makes the job.
        server.add_fault_rules([
            {"method": "POST", "path_prefix": "/v1/jobs", "body": "slow", "delay": 0},
            {"method": "POST", "path_prefix": "/v1/jobs", "body": "slow", "delay": 1.0},
        ])
        mapper = subprocess.Popen([MAPPER, "--config", str(config_path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert mapper.stdin is not None and mapper.stdout is not None
        assert mapper.stderr is not None
        mapper.stdin.write(text.encode())
        mapper.stdin.close()
        wait_until(lambda: server.stats()["slowed"] == 2)
        mapper.kill()
        stdout, stderr = mapper.stdout.read(), mapper.stderr.read()
        mapper.wait(timeout=30)
        assert len(jobs_with_items(server)) == 1  # the second is still being made

        rerun = subprocess.run([MAPPER, "--config", str(config_path)], input=text.encode(),
                               capture_output=True, timeout=120, check=False)
        assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
        jobs = jobs_with_items(server)
    for output in (stdout, stderr, rerun.stdout, rerun.stderr):
        assert API_KEY.split("_", 2)[-1].encode() not in output
    every = [email for items in jobs.values() for email in items]
    assert sorted(every) == sorted(f"p{number}@example.com" for number in range(300))
    second_job = list(jobs)[1]
    assert jobs[second_job] == [f"p{number}@example.com" for number in range(100, 200)]
    ledger = [json.loads(line)["record"] for line in rerun.stdout.splitlines()
              if b'"gtmcli_submissions"' in line and b'"RECORD"' in line]
    adopted = [row for row in ledger if row["job_id"] == second_job]
    assert len(adopted) == 1, rerun.stderr.decode()[-3000:]
    assert adopted[0]["reconciliation"].startswith("adopted:")
    assert f"made job {second_job}" in rerun.stderr.decode()


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
