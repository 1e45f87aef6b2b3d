"""Fixtures for the tap: a sandbox per test and a runner for the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tests.key_scan import TEST_API_KEY

API_KEY = TEST_API_KEY
TAP = str(Path(sys.executable).with_name("tap-gtmcli"))


@dataclass
class TapRun:
    """What one run of the tap printed."""

    returncode: int
    stdout: str
    stderr: str
    messages: list[dict[str, Any]] = field(default_factory=list)

    def records(self, stream: str) -> list[dict[str, Any]]:
        return [m["record"] for m in self.messages if m["type"] == "RECORD" and m["stream"] == stream]

    @property
    def states(self) -> list[dict[str, Any]]:
        return [m["value"] for m in self.messages if m["type"] == "STATE"]

    @property
    def last_state(self) -> dict[str, Any] | None:
        return self.states[-1] if self.states else None


def tap_command(
    tmp_path: Path, config: dict[str, Any], state: dict[str, Any] | None = None,
    prefix: str = "",
) -> list[str]:
    """`tap-gtmcli --config ... [--state ...]`, the files written under `tmp_path`."""
    config_path = tmp_path / f"{prefix}config.json"
    config_path.write_text(json.dumps(config))
    command = [TAP, "--config", str(config_path)]
    if state is not None:
        state_path = tmp_path / f"{prefix}state.json"
        state_path.write_text(json.dumps(state))
        command += ["--state", str(state_path)]
    return command


def run_tap(
    tmp_path: Path, config: dict[str, Any], state: dict[str, Any] | None = None, timeout: float = 120
) -> TapRun:
    """Run `tap-gtmcli` as a user would, and parse its Singer output."""
    command = tap_command(tmp_path, config, state)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    messages = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return TapRun(done.returncode, done.stdout, done.stderr, messages)


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """A fast, fault-free sandbox on 127.0.0.1: seeded jobs complete at once."""
    with SandboxServer(
        SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0)
    ) as server:
        yield server


@pytest.fixture
def tap_config(sandbox: SandboxServer) -> dict[str, Any]:
    return {"api_key": API_KEY, "api_url": sandbox.url, "max_retries": 3}
