"""target-gtmcli: the same submitter, confirming STATE and keeping a ledger file."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tap_gtmcli.submit.target import TargetGTMCLI
from tests.helpers.keys import API_KEY
from tests.helpers.mapper_runs import (
    CONTACTS_SETTINGS,
    TARGET,
    mapper_settings,
    run_mapper,
    run_mapper_cli,
)
from tests.helpers.sandboxes import submitted_jobs
from tests.helpers.singer import FIXTURES, fixture_messages, fixture_text


def test_target_writes_only_confirmed_state_and_the_ledger(sandbox: Any, tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.jsonl"
    config = mapper_settings(sandbox, **CONTACTS_SETTINGS, ledger_path=str(ledger_path))
    result = run_mapper_cli(config, FIXTURES / "contacts.singer", tmp_path, command=TARGET)
    assert result.returncode == 0, result.stderr
    upstream = fixture_messages("contacts.singer")
    assert result.messages == [upstream[6], upstream[11], upstream[15]]
    rows = [json.loads(line) for line in ledger_path.read_text().splitlines()]
    assert [(row["job_type"], row["item_count"], row["source_stream"]) for row in rows] == [
        ("validate", 3, "contacts"),
        ("find", 1, "contacts"),
        ("validate", 1, "contacts"),
    ]
    assert submitted_jobs(sandbox)[0][1] == [
        {"email": "ada@acme.io"},
        {"email": "grace@navy.mil"},
        {"email": "alan@bletchley.uk"},
    ]
    assert "Ledger: " in result.stderr


def test_target_stops_on_402_without_confirming_the_refused_batch(tmp_path: Path) -> None:


    ledger_path = tmp_path / "ledger.jsonl"
    with SandboxServer(
        SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0, credits=0.6)
    ) as server:
        config = mapper_settings(server, batch_size=2, ledger_path=str(ledger_path))
        result = run_mapper_cli(config, FIXTURES / "two_batches.singer", tmp_path,
                                command=TARGET)
    assert result.returncode == 1
    assert "402" in result.stderr
    assert result.messages == [fixture_messages("two_batches.singer")[3]]
    assert len(ledger_path.read_text().splitlines()) == 1


def test_target_in_process_matches_the_mapper_states(sandbox: Any) -> None:
    out = run_mapper(
        mapper_settings(sandbox, **CONTACTS_SETTINGS),
        fixture_text("contacts.singer"),
        plugin=TargetGTMCLI,
    )
    assert all(message["type"] == "STATE" for message in out)
    assert len(out) == 3


def test_target_refuses_enrich_mode(tmp_path: Path) -> None:
    config = {"api_key": API_KEY, "api_url": "http://127.0.0.1:9", "mode": "enrich"}
    result = run_mapper_cli(config, FIXTURES / "two_batches.singer", tmp_path, command=TARGET)
    assert result.returncode == 1
    assert "mode: target-gtmcli only submits" in result.stderr


def test_target_about_lists_the_shared_settings_and_ledger_path() -> None:
    about = subprocess.run([TARGET, "--about", "--format", "json"], capture_output=True, check=True)
    properties = json.loads(about.stdout)["settings"]["properties"]
    assert {"api_key", "batch_size", "streams", "ledger_path"} <= set(properties)
    assert properties["api_key"]["secret"] is True


#: Seeded variants of a run whose create fails: where it fails (first, a middle or the
#: last create, at the end of input or mid-stream), how (401, 402, 400, 503 until the
#: retries run out), how fast the API answers, and how records, batches and STATEs fall.
FAILING_RUNS = 12


def failing_run(seed: int) -> tuple[bytes, dict, list[dict]]:
    """Input, settings (batch size, API latency) and fault rules of one seeded run."""
    rng = random.Random(seed)
    records, batch = rng.randint(6, 60), rng.randint(1, 12)
    state_every = rng.randint(1, 8)
    lines = [{"type": "SCHEMA", "stream": "c", "key_properties": ["id"],
              "schema": {"type": "object", "properties": {"id": {"type": "integer"}}}}]
    for number in range(1, records + 1):
        lines.append({"type": "RECORD", "stream": "c",
                      "record": {"id": number, "email": f"p{number}@x{seed}.io"}})
        if number % state_every == 0 or number == records:
            lines.append({"type": "STATE", "value": {"position": number}})
    batches = -(-records // batch)
    succeed_first = rng.randint(0, batches - 1)
    rules: list[dict] = []
    if succeed_first:
        rules.append({"method": "POST", "path_prefix": "/v1/jobs", "status": 200,
                      "body": "slow", "delay": rng.choice([0, 0.1]), "count": succeed_first})
    rules.append({"method": "POST", "path_prefix": "/v1/jobs",
                  "status": rng.choice([401, 402, 400, 503]), "count": 50})
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return data, {"batch_size": batch, "latency_ms": rng.choice([0, 5, 50])}, rules


@pytest.mark.parametrize("seed", range(FAILING_RUNS))
def test_a_failed_create_always_exits_non_zero(seed: int, tmp_path: Path) -> None:
    """target-gtmcli once exited 0 after logging a failed create. Every variant must exit
    1, name the failed create, and confirm no STATE past a record GTMCLI did not get."""
    data, settings, rules = failing_run(seed)
    with SandboxServer(SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0,
                                     latency_ms=settings["latency_ms"])) as server:
        server.add_fault_rules(rules)
        config = mapper_settings(server, batch_size=settings["batch_size"], max_retries=1)
        done = run_mapper_cli(config, data, tmp_path, command=TARGET)
        received = {item["email"] for _, items in submitted_jobs(server) for item in items}
    stderr = done.stderr
    assert done.returncode == 1, stderr[-3000:]
    assert "Submitting the validate job" in stderr and "failed" in stderr
    assert "Traceback" not in stderr
    confirmed = [m["value"]["position"] for m in done.messages]
    for position in range(1, (confirmed[-1] if confirmed else 0) + 1):
        assert f"p{position}@x{seed}.io" in received, f"STATE {confirmed[-1]} went out early"
    succeeded = rules[0]["count"] if len(rules) == 2 else 0
    assert f"Submitted {succeeded} GTMCLI jobs ({len(received)} items); not submitted: " in stderr


def test_a_signal_mid_create_exits_non_zero(tmp_path: Path) -> None:
    """SIGTERM while a create runs: the SDK's own handler exits 0, ours says the run did
    not finish, and no create is sent after the signal."""
    lines = [{"type": "SCHEMA", "stream": "c", "key_properties": [],
              "schema": {"type": "object"}}]
    lines += [{"type": "RECORD", "stream": "c", "record": {"email": f"p{n}@x.io"}}
              for n in range(1, 21)]
    with SandboxServer(SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0)) as server:
        server.add_fault_rules([{"method": "POST", "path_prefix": "/v1/jobs", "status": 200,
                                 "body": "slow", "delay": 1.5, "count": 1}])
        config = mapper_settings(server, batch_size=10, max_retries=3, request_timeout=30)
        (tmp_path / "config.json").write_text(json.dumps(config))
        with subprocess.Popen([TARGET, "--config", str(tmp_path / "config.json")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as target:
            assert target.stdin is not None
            target.stdin.write("".join(json.dumps(line) + "\n" for line in lines).encode())
            target.stdin.close()
            target.stdin = None
            deadline = time.monotonic() + 60
            while server.stats()["requests"].get("POST /v1/jobs", 0) < 1:
                assert time.monotonic() < deadline, "the first create never arrived"
                time.sleep(0.02)
            target.send_signal(signal.SIGTERM)
            _, stderr = target.communicate(timeout=60)
        posts = server.stats()["requests"]["POST /v1/jobs"]
    assert target.returncode == 128 + signal.SIGTERM, stderr.decode()[-2000:]
    assert "Stopped by signal 15" in stderr.decode()
    assert posts == 1
