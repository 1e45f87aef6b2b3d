"""target-gtmcli: the same submitter, confirming STATE and keeping a ledger file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tap_gtmcli.submit.target import TargetGTMCLI

from .conftest import (
    API_KEY,
    fixture_messages,
    fixture_text,
    read_messages,
    run_mapper,
    sandbox_config,
)
from .test_mapper_sandbox import CONTACTS_SETTINGS, run_cli, submitted_jobs

TARGET = str(Path(sys.executable).parent / "target-gtmcli")


def test_target_writes_only_confirmed_state_and_the_ledger(sandbox: Any, tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.jsonl"
    config = sandbox_config(sandbox, **CONTACTS_SETTINGS, ledger_path=str(ledger_path))
    result = run_cli("target-gtmcli", config, "contacts.singer", tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    upstream = fixture_messages("contacts.singer")
    assert read_messages(result.stdout) == [upstream[6], upstream[11], upstream[15]]
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
    assert "Ledger: " in result.stderr.decode()


def test_target_stops_on_402_without_confirming_the_refused_batch(tmp_path: Path) -> None:


    ledger_path = tmp_path / "ledger.jsonl"
    with SandboxServer(
        SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0, credits=0.6)
    ) as server:
        config = sandbox_config(server, batch_size=2, ledger_path=str(ledger_path))
        result = run_cli("target-gtmcli", config, "two_batches.singer", tmp_path)
    assert result.returncode == 1
    assert "402" in result.stderr.decode()
    assert read_messages(result.stdout) == [fixture_messages("two_batches.singer")[3]]
    assert len(ledger_path.read_text().splitlines()) == 1


def test_target_in_process_matches_the_mapper_states(sandbox: Any) -> None:
    out = run_mapper(
        sandbox_config(sandbox, **CONTACTS_SETTINGS),
        fixture_text("contacts.singer"),
        plugin=TargetGTMCLI,
    )
    assert all(message["type"] == "STATE" for message in out)
    assert len(out) == 3


def test_target_refuses_enrich_mode(tmp_path: Path) -> None:
    config = {"api_key": API_KEY, "api_url": "http://127.0.0.1:9", "mode": "enrich"}
    result = run_cli("target-gtmcli", config, "two_batches.singer", tmp_path)
    assert result.returncode == 1
    assert "mode: target-gtmcli only submits" in result.stderr.decode()


def test_target_about_lists_the_shared_settings_and_ledger_path() -> None:
    about = subprocess.run([TARGET, "--about", "--format", "json"], capture_output=True, check=True)
    properties = json.loads(about.stdout)["settings"]["properties"]
    assert {"api_key", "batch_size", "streams", "ledger_path"} <= set(properties)
    assert properties["api_key"]["secret"] is True
