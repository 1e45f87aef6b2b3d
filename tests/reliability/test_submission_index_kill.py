"""The mapper SIGKILLed after GTMCLI created a job but before the submission index
recorded it: the rerun adopts that job (its intent was written before the create) and
sends none of its items again.

The first create is held a moment at the sandbox; meanwhile the test takes the index's
write lock from outside, so the kill lands exactly in that window: the create has
answered (the sandbox holds the job) and the index write waits.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

from tests.helpers import key_scan
from tests.helpers.mapper_runs import LEDGER, MAPPER, mapper_settings, run_mapper_cli
from tests.helpers.sandboxes import (
    fast_sandbox,
    item_key,
    job_items,
    received_items,
    sandbox_jobs,
)
from tests.helpers.singer import singer_text
from tests.helpers.submit_oracle import contacts_input
from tests.helpers.tap_runs import cli_environment

RECORDS = 600
BATCH = 200
STATE_EVERY = 50


def wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_sigkill_between_create_and_index_write_adopts_the_job(tmp_path: Path) -> None:
    messages = contacts_input(RECORDS, STATE_EVERY)
    schema, rest = messages[:1], messages[1:]
    index = tmp_path / "index.sqlite"
    with fast_sandbox() as server:
        config = mapper_settings(server, batch_size=BATCH, submission_index=str(index))
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps(config))
        server.add_fault_rules([{"method": "POST", "path_prefix": "/v1/jobs", "body": "slow",
                                 "delay": 1.0}])
        mapper = subprocess.Popen([MAPPER, "--config", str(config_path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=cli_environment())
        assert mapper.stdin is not None and mapper.stdout is not None
        # A STATE with nothing pending comes straight back: the index is open by then.
        opening_state = {"type": "STATE", "value": {"bookmarks": {"contacts": {"position": 0}}}}
        mapper.stdin.write(singer_text([*schema, opening_state]).encode())
        mapper.stdin.flush()
        first_out = [mapper.stdout.readline(), mapper.stdout.readline()]
        assert json.loads(first_out[-1])["type"] == "STATE"

        lock = sqlite3.connect(index, isolation_level=None, timeout=30)
        try:
            mapper.stdin.write(singer_text(rest).encode())
            mapper.stdin.close()
            wait_for(lambda: server.stats()["slowed"] == 1)  # the first create is held
            lock.execute("BEGIN IMMEDIATE")  # its index write now waits
            wait_for(lambda: len(sandbox_jobs(server)) == 1)
            time.sleep(0.5)  # the create's answer is in; the index write is waiting
            mapper.send_signal(signal.SIGKILL)
            stdout = mapper.stdout.read()
            stderr = mapper.stderr.read() if mapper.stderr is not None else b""
            mapper.wait(timeout=30)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        key_scan.record("killed mapper", first_out[0] + first_out[1] + stdout + stderr)
        killed_states = [json.loads(line) for line in [*first_out, *stdout.splitlines()]
                         if b'"STATE"' in line]
        # Nothing past the opening STATE went downstream: the job was not recorded.
        assert [m["value"] for m in killed_states] == [opening_state["value"]]
        [first_job] = sandbox_jobs(server)  # the next batch waited behind the first
        first_items = [item_key(item) for item in job_items(server, first_job["id"])]

        resumed = run_mapper_cli(config, messages, tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        received = Counter(received_items(server))

    emails = [("validate", m["record"]["email"]) for m in messages if m["type"] == "RECORD"]
    # The job made before the kill holds exactly the first batch ...
    assert first_items == emails[:BATCH]
    # ... and the rerun adopted it: every item was paid for once.
    assert received == Counter(emails)
    ledger = resumed.records(LEDGER)
    adopted = [row for row in ledger if row["job_id"] == first_job["id"]]
    assert len(adopted) == 1
    assert adopted[0]["reconciliation"].startswith("adopted: the create of 200 validate items")
    assert adopted[0]["item_count"] == BATCH
    assert sum(row["item_count"] for row in ledger) == RECORDS
    assert f"made job {first_job['id']}" in resumed.stderr


def test_after_a_clean_run_a_replay_sends_nothing(tmp_path: Path) -> None:
    messages = contacts_input(RECORDS, STATE_EVERY)
    with fast_sandbox() as server:
        config = mapper_settings(server, batch_size=BATCH,
                                 submission_index=str(tmp_path / "index.sqlite"))
        first = run_mapper_cli(config, messages, tmp_path)
        assert first.returncode == 0, first.stderr[-2000:]
        jobs = len(sandbox_jobs(server))
        replay = run_mapper_cli(config, messages, tmp_path)
        assert replay.returncode == 0, replay.stderr[-2000:]
        assert len(sandbox_jobs(server)) == jobs == RECORDS // BATCH
        assert f"Skipped {RECORDS} items submitted in the last 30 days" in replay.stderr
