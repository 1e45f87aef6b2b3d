"""The mapper SIGKILLed after GTMCLI created a job but before the submission index
recorded it: the rerun sends that one batch again, and nothing else twice.

The test holds the index's write lock from outside, so the kill lands exactly in that
window: the create has answered (the sandbox holds the job) and the index write waits.
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
from tests.helpers.mapper_runs import MAPPER, mapper_settings, run_mapper_cli
from tests.helpers.sandboxes import fast_sandbox, received_items, sandbox_jobs
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
        time.sleep(0.05)


def test_sigkill_between_create_and_index_write_resends_one_batch(tmp_path: Path) -> None:
    messages = contacts_input(RECORDS, STATE_EVERY)
    schema, rest = messages[:1], messages[1:]
    index = tmp_path / "index.sqlite"
    with fast_sandbox() as server:
        config = mapper_settings(server, batch_size=BATCH, submission_index=str(index))
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps(config))
        mapper = subprocess.Popen([MAPPER, "--config", str(config_path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_environment())
        assert mapper.stdin is not None and mapper.stdout is not None
        # A STATE with nothing pending comes straight back: the index is open by then.
        opening_state = {"type": "STATE", "value": {"bookmarks": {"contacts": {"position": 0}}}}
        mapper.stdin.write(singer_text([*schema, opening_state]).encode())
        mapper.stdin.flush()
        first_out = [mapper.stdout.readline(), mapper.stdout.readline()]
        assert json.loads(first_out[-1])["type"] == "STATE"

        lock = sqlite3.connect(index, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the index write of the first job now waits
        try:
            mapper.stdin.write(singer_text(rest).encode())
            mapper.stdin.close()
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
        assert len(sandbox_jobs(server)) == 1  # the next batch waited behind the first

        resumed = run_mapper_cli(config, messages, tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        received = Counter(received_items(server))

    every_item = {("validate", m["record"]["email"]) for m in messages if m["type"] == "RECORD"}
    assert set(received) == every_item
    twice = [item for item, count in received.items() if count > 1]
    assert len(twice) == BATCH  # exactly the batch created before the kill, once more
    assert max(received.values()) == 2
    ledger = [m["record"] for m in resumed.messages
              if m["type"] == "RECORD" and m["stream"] == "gtmcli_submissions"]
    assert sum(row["item_count"] for row in ledger) == RECORDS


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
