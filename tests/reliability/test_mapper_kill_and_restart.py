"""The mapper (console script, submit mode) SIGKILLed at 20 points and resumed from the
last STATE it emitted; and the sandbox (--db) restarted in the middle of a mapper run."""

from __future__ import annotations

import json
import random
import re
import signal
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


def run_until_killed(config_path: Path, input_path: Path, kill_after_records: int) -> list[dict]:
    """Start the mapper on the .singer file, SIGKILL it once it has passed
    `kill_after_records` upstream records through, and return everything it had written."""
    with input_path.open("rb") as stdin, subprocess.Popen(
        [MAPPER, "--config", str(config_path)], stdin=stdin, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, env=cli_environment(),
    ) as process:
        assert process.stdout is not None
        messages, seen = [], 0
        for line in process.stdout:
            message = json.loads(line)
            messages.append(message)
            if message["type"] == "RECORD" and message["stream"] == "contacts":
                seen += 1
                if seen >= kill_after_records:
                    process.send_signal(signal.SIGKILL)
                    break
        # What was already in the pipe reached the "target" before the kill took effect.
        messages += [json.loads(line) for line in process.stdout if line.endswith(b"\n")]
        process.wait()
    key_scan.record("killed mapper stdout", messages)
    return messages


def one_trial(tmp_path: Path, trial: int, kill_after: int, messages: list[dict]) -> dict:
    directory = tmp_path / f"trial{trial}"
    directory.mkdir()
    input_path = directory / "input.singer"
    input_path.write_text(singer_text(messages))
    with fast_sandbox() as server:
        # An index per trial: a later trial's sandbox may get an earlier one's port, and
        # the index would take it for the same account.
        config = mapper_settings(server, batch_size=BATCH,
                                 submission_index=str(directory / "index.sqlite"))
        config_path = directory / "config.json"
        config_path.write_text(json.dumps(config))
        first = run_until_killed(config_path, input_path, kill_after)
        states = [m["value"] for m in first if m["type"] == "STATE"]
        last = states[-1] if states else None
        resumed = run_mapper_cli(config, replay_after(messages, last), directory)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert_no_key(first, resumed.messages, resumed.stderr)
        received = Counter(received_items(server))
    truth = mapper_truth(messages, BATCH).items
    passed = {m["record"]["id"] for m in first if m.get("stream") == "contacts"
              and m["type"] == "RECORD"} | {r["id"] for r in resumed.records("contacts")}
    return {
        "kill_after": kill_after,
        "resumed_from": state_position(last),
        "lost": sum((truth - received).values()),
        "unexpected": len(set(received) - set(truth)),
        "twice": sum(received.values()) - len(received),
        "passthrough_missing": RECORDS - len(passed),
        "jobs_first": len([m for m in first if m.get("stream") == LEDGER
                           and m["type"] == "RECORD"]),
    }


def test_sigkill_at_20_points_never_loses_an_item(tmp_path, print_figures):
    messages = contacts_input(RECORDS, STATE_EVERY)
    kill_points = sorted(random.Random(20261129).sample(range(1, RECORDS), TRIALS))
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda args: one_trial(tmp_path, *args, messages),
                                enumerate(kill_points)))
    for result in results:
        assert result["lost"] == 0, f"items never submitted: {result}"
        assert result["unexpected"] == 0, result
        assert result["passthrough_missing"] == 0, result
        # At-least-once across a crash: at most the batches created after the last
        # STATE that went downstream are submitted again.
        assert result["twice"] <= 2 * BATCH, result
    twice = [result["twice"] for result in results]
    print_figures(
        f"mapper kill-and-resume: {TRIALS} trials over {RECORDS} records "
        f"(batch_size {BATCH}, STATE every {STATE_EVERY}), items lost 0 in every trial, "
        f"items submitted twice total {sum(twice)} (min {min(twice)} / max {max(twice)}); "
        "per trial (killed after records -> resumed from position: twice): "
        + ", ".join(f"{r['kill_after']}->{r['resumed_from']}: {r['twice']}" for r in results)
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
