"""The submission index shared in a real PostgreSQL on loopback (the session's server).

Each test gets a database of its own on that server; what was paid for is counted in the
sandbox's jobs.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.errors import SubmissionFailedError
from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tap_gtmcli.submit.submission_index import SCHEMA_LOCK, PostgresIndex
from tests.helpers.fake_client import FakeGTMCLI
from tests.helpers.keys import API_KEY
from tests.helpers.mapper_runs import MAPPER, run_mapper
from tests.helpers.postgres import PostgresServer


@pytest.fixture
def index_url(postgres_server: PostgresServer) -> str:
    """A fresh database on the session's PostgreSQL, as a `postgresql://` URL."""
    name = f"index_{uuid.uuid4().hex[:12]}"
    postgres_server.query(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@127.0.0.1:{postgres_server.port}/{name}"


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
    client = GTMCLIClient(api_url=server.url, api_key=API_KEY)
    try:
        job_ids = [job["id"] for job in client.list_jobs()]
    finally:
        client.close()
    return Counter(item["email"] for job_id in job_ids for item in server.job_items(job_id))


def index_counts(postgres_server: PostgresServer, database: str) -> list[list[str]]:
    """(entries, confirmed entries) of the index table in one database."""
    return postgres_server.query("SELECT count(*), count(job_id) FROM gtmcli_submission_index",
                                 database=database)


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
    index_url: str, postgres_server: PostgresServer
) -> None:
    config = {"submission_index": index_url, "batch_size": 10}
    messages = [json.loads(line) for line in contacts_text(list(range(25))).splitlines()]
    failing = FakeGTMCLI(create_script=["ok", "402"])
    with pytest.raises(SubmissionFailedError, match="402") as failure:
        run_mapper(config, messages, failing)
    failed_output = [run_mapper.last_output, str(failure.value)]  # type: ignore[attr-defined]
    database = index_url.rsplit("/", 1)[1]
    # The first batch's job exists and is recorded; the failed batch left no claim.
    assert index_counts(postgres_server, database) == [["10", "10"]]

    retry = FakeGTMCLI()
    out = run_mapper(config, messages, retry)
    for output in (failed_output, out):
        assert API_KEY not in json.dumps(output)
    sent = [item["email"] for items in retry.items.values() for item in items]
    assert sorted(sent) == sorted(f"p{number}@example.com" for number in range(10, 25))
    assert index_counts(postgres_server, database) == [["25", "25"]]


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
