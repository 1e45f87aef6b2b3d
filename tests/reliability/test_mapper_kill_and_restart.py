"""The mapper (console script, submit mode) SIGKILLed in 20 trials, in every phase of a
create, and resumed from the last STATE it emitted; and the sandbox (--db) restarted in
the middle of a mapper run."""

from __future__ import annotations

import json
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.helpers import key_scan
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.mapper_runs import LEDGER, MAPPER, mapper_settings, run_mapper_cli
from tests.helpers.sandboxes import (
    fast_sandbox,
    received_items,
    sandbox_jobs,
    start_sandbox_process,
    stop_sandbox_process,
)
from tests.helpers.singer import singer_text
from tests.helpers.submit_oracle import contacts_input, mapper_truth, replay_after, state_position
from tests.helpers.tap_runs import cli_environment

TRIALS = 20
RECORDS = 8000
BATCH = 1000
STATE_EVERY = 500
#: Where a kill lands, relative to the create of the trial's chosen batch.
PHASES = ("before the create", "during the create", "between the answer and the index write",
          "after the index write")


def scripted_creates(server, batch: int, rule: dict | None) -> None:
    """`rule` applies to the `batch`-th POST /v1/jobs; the ones before pass untouched."""
    rules = []
    if batch > 1:
        rules.append({"method": "POST", "path_prefix": "/v1/jobs", "body": "slow", "delay": 0,
                      "count": batch - 1})
    if rule is not None:
        rules.append({"method": "POST", "path_prefix": "/v1/jobs", "count": 1, **rule})
    if rules:
        server.add_fault_rules(rules)


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def recorded_jobs(index: Path) -> int:
    if not index.exists():
        return 0
    with sqlite3.connect(index) as db:
        try:
            return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])
        except sqlite3.OperationalError:  # the tables are not made yet
            return 0


def run_until_killed(server, config_path: Path, input_path: Path, index: Path, phase: str,
                     batch: int) -> list[dict]:
    """Run the mapper on the .singer file, SIGKILL it in `phase` of the create of its
    `batch`-th job, and return everything it had written.

    - before the create: the POST is dropped unanswered and unhandled (GTMCLI made no
      job); killed while the mapper looks for one;
    - during the create: killed while GTMCLI holds the POST; the job is made after;
    - between the answer and the index write: the index's write lock is held from here
      while the answer comes in, so the write waits; killed then;
    - after the index write: killed once the index holds the job.
    """
    rule = {"before the create": {"body": "drop"},
            "during the create": {"body": "slow", "delay": 1.0},
            "between the answer and the index write": {"body": "slow", "delay": 0.8},
            "after the index write": None}[phase]
    scripted_creates(server, batch, rule)
    lock = None
    with input_path.open("rb") as stdin, subprocess.Popen(
        [MAPPER, "--config", str(config_path)], stdin=stdin, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, env=cli_environment(),
    ) as process:
        assert process.stdout is not None
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.extend(process.stdout), daemon=True)
        reader.start()
        try:
            if phase == "before the create":
                wait_for(lambda: server.stats()["dropped"] == 1, "the dropped create")
            elif phase == "during the create":
                wait_for(lambda: server.stats()["slowed"] == batch, "the held create")
            elif phase == "between the answer and the index write":
                wait_for(lambda: server.stats()["slowed"] == batch, "the held create")
                lock = sqlite3.connect(index, isolation_level=None, timeout=30)
                lock.execute("BEGIN IMMEDIATE")  # the job's index write now waits
                wait_for(lambda: len(sandbox_jobs(server)) == batch, "the job")
                time.sleep(0.3)  # the answer is in
            else:
                wait_for(lambda: recorded_jobs(index) >= batch or process.poll() is not None,
                         "the index write")
            process.send_signal(signal.SIGKILL)
            process.wait()
            reader.join(timeout=10)
        finally:
            if lock is not None:
                lock.execute("ROLLBACK")
                lock.close()
    messages = [json.loads(line) for line in out if line.endswith(b"\n")]
    key_scan.record("killed mapper stdout", messages)
    return messages


def one_trial(tmp_path: Path, trial: int, phase: str, batch: int, messages: list[dict]) -> dict:
    directory = tmp_path / f"trial{trial}"
    directory.mkdir()
    input_path = directory / "input.singer"
    input_path.write_text(singer_text(messages))
    index = directory / "index.sqlite"
    with fast_sandbox() as server:
        # An index per trial: a later trial's sandbox may get an earlier one's port, and
        # the index would take it for the same account.
        config = mapper_settings(server, batch_size=BATCH, submission_index=str(index))
        config_path = directory / "config.json"
        config_path.write_text(json.dumps(config))
        first = run_until_killed(server, config_path, input_path, index, phase, batch)
        jobs_at_kill = [job["id"] for job in sandbox_jobs(server)]
        states = [m["value"] for m in first if m["type"] == "STATE"]
        last = states[-1] if states else None
        resumed = run_mapper_cli(config, replay_after(messages, last), directory)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert_no_key(first, resumed.messages, resumed.stderr)
        received = Counter(received_items(server))
        job_ids = [job["id"] for job in sandbox_jobs(server)]
    truth = mapper_truth(messages, BATCH).items
    passed = {m["record"]["id"] for m in first if m.get("stream") == "contacts"
              and m["type"] == "RECORD"} | {r["id"] for r in resumed.records("contacts")}
    reconciled = {row["job_id"]: row["reconciliation"] for row in resumed.records(LEDGER)
                  if row["reconciliation"]}
    return {
        "phase": phase,
        "batch": batch,
        "resumed_from": state_position(last),
        "lost": sum((truth - received).values()),
        "unexpected": len(set(received) - set(truth)),
        "twice": sum(received.values()) - len(received),
        "passthrough_missing": RECORDS - len(passed),
        "jobs_at_kill": len(jobs_at_kill),
        "jobs": len(job_ids),
        "kth_job": job_ids[batch - 1] if len(job_ids) >= batch else None,
        "reconciled": reconciled,
    }


def test_sigkill_in_every_phase_of_a_create_submits_each_item_exactly_once(
    tmp_path, print_figures
):
    messages = contacts_input(RECORDS, STATE_EVERY)
    chosen = random.Random(20261203)
    trials = [(trial, PHASES[trial % len(PHASES)], chosen.randint(1, RECORDS // BATCH))
              for trial in range(TRIALS)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda args: one_trial(tmp_path, *args, messages), trials))
    for result in results:
        assert result["lost"] == 0, f"items never submitted: {result}"
        assert result["twice"] == 0, f"items submitted twice: {result}"
        assert result["unexpected"] == 0, result
        assert result["passthrough_missing"] == 0, result
        assert result["jobs"] == RECORDS // BATCH, result
        reasons = list(result["reconciled"].values())
        if result["phase"] == "before the create":
            # GTMCLI made no job: the rerun looked, found none and sent the batch again.
            assert result["jobs_at_kill"] == result["batch"] - 1, result
            assert [reason.split(":")[0] for reason in reasons] == ["resent"], result
            assert "made no job" in reasons[0], result
        elif result["phase"] != "after the index write":
            # The job the killed run's create made was adopted, not paid for again.
            assert result["reconciled"].get(result["kth_job"], "").startswith("adopted:"), result
    twice = [result["twice"] for result in results]
    print_figures(
        f"mapper kill-and-resume: {TRIALS} trials over {RECORDS} records (batch_size {BATCH}, "
        f"STATE every {STATE_EVERY}), kills in each phase of a create; items lost 0 and "
        f"submitted twice {sum(twice)} in total; per trial (phase, batch -> resumed from: "
        "reconciled): " + "; ".join(
            f"{r['phase']}, {r['batch']} -> {r['resumed_from']}: "
            + (", ".join(reason.split(":")[0] for reason in r["reconciled"].values()) or "-")
            for r in results)
    )


# --------------------------------------------------------------------- sandbox restart


def admin(url: str, path: str) -> dict:
    import requests

    answer = requests.get(f"{url}{path}", headers={"Authorization": f"Bearer {API_KEY}"},
                          timeout=10)
    answer.raise_for_status()
    return dict(answer.json())


def wait_for_creates(url: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while admin(url, "/_sandbox/stats")["requests"].get("POST /v1/jobs", 0) < count:
        assert time.monotonic() < deadline, f"fewer than {count} creates within {timeout} s"
        time.sleep(0.05)


def test_mapper_completes_exactly_across_a_sandbox_restart(tmp_path):
    db = tmp_path / "sandbox.db"
    sandbox, url = start_sandbox_process(db, latency_ms=50)
    port = int(url.rsplit(":", 1)[1])
    messages = contacts_input(3000, 500)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(mapper_settings(url, batch_size=500, max_retries=8)))
    lines = singer_text(messages).encode().splitlines(keepends=True)
    half = next(i for i, m in enumerate(messages) if m["type"] == "STATE"
                and state_position(m["value"]) == 1500) + 1
    mapper = subprocess.Popen([MAPPER, "--config", str(config_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_environment())
    assert mapper.stdin and mapper.stdout and mapper.stderr
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=lambda: out.extend(mapper.stdout), daemon=True),  # type: ignore[arg-type]
               threading.Thread(target=lambda: err.extend(mapper.stderr), daemon=True)]  # type: ignore[arg-type]
    for reader in readers:
        reader.start()
    try:
        mapper.stdin.writelines(lines[:half])
        mapper.stdin.flush()
        wait_for_creates(url, 3)
        stop_sandbox_process(sandbox)  # between batches: the next creates meet refused connections
        mapper.stdin.writelines(lines[half:half + 600])
        mapper.stdin.flush()
        time.sleep(0.5)
        sandbox, _ = start_sandbox_process(db, port=port)
        mapper.stdin.writelines(lines[half + 600:])
        mapper.stdin.close()
        mapper.wait(timeout=180)
        for reader in readers:
            reader.join(timeout=10)
        stderr = b"".join(err).decode()
        key_scan.record("mapper stderr", stderr)
        key_scan.record("mapper stdout", b"".join(out))
        assert mapper.returncode == 0, stderr[-3000:]
        emitted = [json.loads(line) for line in out]
        truth = mapper_truth(messages, 500).items
        received = Counter(received_items(url))
        assert received == truth, f"missing {truth - received}, extra {received - truth}"
        assert [m for m in emitted if m.get("stream") != LEDGER] == messages
        assert re.search(r"POST /v1/jobs (failed|may or may not)", stderr), stderr[-2000:]
        assert_no_key(stderr, emitted)
    finally:
        if mapper.poll() is None:
            mapper.kill()
            mapper.wait()
        stop_sandbox_process(sandbox)


def test_state_of_created_batches_goes_downstream_while_upstream_is_idle(tmp_path):
    messages = contacts_input(3000, 500)
    lines = singer_text(messages).encode().splitlines(keepends=True)
    half = next(i for i, m in enumerate(messages) if m["type"] == "STATE"
                and state_position(m["value"]) == 1500) + 1
    with fast_sandbox() as server:
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps(mapper_settings(server, batch_size=500)))
        mapper = subprocess.Popen([MAPPER, "--config", str(config_path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=cli_environment())
        assert mapper.stdin and mapper.stdout
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.extend(mapper.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        try:
            mapper.stdin.writelines(lines[:half])
            mapper.stdin.flush()
            wait_for_creates(server.url, 3)
            time.sleep(3)  # upstream idles (a slow tap); the three jobs exist
            states = [json.loads(line)["value"] for line in list(out) if b'"STATE"' in line]
        finally:
            mapper.stdin.close()
            mapper.wait(timeout=60)
            reader.join(timeout=10)
        key_scan.record("mapper stdout", b"".join(out))
        assert states and state_position(states[-1]) == 1500
