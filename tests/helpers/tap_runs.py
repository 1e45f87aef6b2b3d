"""The tap's runner: `tap-gtmcli` as a user runs it, or in this process."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.sandbox import SandboxServer
from tests.helpers import key_scan
from tests.helpers.capture import captured_log
from tests.helpers.keys import API_KEY
from tests.helpers.singer import TapRun, read_messages

TAP = str(Path(sys.executable).with_name("tap-gtmcli"))
#: Quick polling for `wait_for_jobs` runs against the slow sandbox (tests/helpers/sandboxes.py).
WAIT_SETTINGS = {"poll_interval": 0.2, "poll_interval_max": 1.0, "results_per_page": 500}
#: What a test does when the tap has emitted a message (`run_tap_watched`): "kill" stops
#: the tap. It gets the message and every message so far.
Watcher = Callable[[dict[str, Any], list[dict[str, Any]]], str | None]


def tap_settings(server: SandboxServer | str, **settings: Any) -> dict[str, Any]:
    """The tap's config for a sandbox (an in-process server or a URL), few retries."""
    url = server if isinstance(server, str) else server.url
    return {"api_key": API_KEY, "api_url": url, "max_retries": 3, **settings}


def cli_environment() -> dict[str, str]:
    """The environment of a console-script run: this process's, warnings silenced."""
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


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
    tmp_path: Path, config: dict[str, Any], state: dict[str, Any] | None = None,
    timeout: float = 120,
) -> TapRun:
    """Run `tap-gtmcli` as a user would, and parse its Singer output (the key scan reads
    both its pipes through its `subprocess.Popen` hook)."""
    done = subprocess.run(tap_command(tmp_path, config, state), capture_output=True, text=True,
                          timeout=timeout, env=cli_environment(), check=False)
    return TapRun(read_messages(done.stdout), returncode=done.returncode, stdout=done.stdout,
                  stderr=done.stderr)


def run_tap_watched(
    tmp_path: Path, config: dict[str, Any], watch: Watcher, state: dict | None = None,
    timeout: float = 120,
) -> TapRun:
    """Run the console script, handing each message to `watch` as it arrives; SIGKILL
    the tap when `watch` says "kill" (the run keeps what was already in the pipe)."""
    command = tap_command(tmp_path, config, state, prefix="watched-")
    stderr_path = tmp_path / "watched-stderr.log"
    messages: list[dict[str, Any]] = []
    with stderr_path.open("w") as stderr, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=cli_environment(),
    ) as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                messages.append(json.loads(line))
                if watch(messages[-1], messages) == "kill":
                    process.send_signal(signal.SIGKILL)
                    break
            # What was already in the pipe reached the "target" before the kill took effect.
            messages += [json.loads(line) for line in process.stdout if line.endswith("\n")]
            process.wait(timeout=timeout)
        finally:
            if process.poll() is None:  # a failed assertion in `watch` must not leave it
                process.kill()
    stdout = "".join(json.dumps(message) + "\n" for message in messages)
    return TapRun(messages, returncode=process.returncode, stdout=stdout,
                  stderr=stderr_path.read_text())


def run_tap_in_process(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, state: dict | None = None
) -> TapRun:
    """Sync the tap in this process; backoff sleeps are recorded, not slept. An error that
    stops the run is returned in `error`, never raised."""
    from tap_gtmcli.tap.tap import TapGTMCLI

    sleeps: list[float] = []
    monkeypatch.setattr("tap_gtmcli.tap.client.sleep_unless_stopped",
                        lambda seconds, _stop, _what: sleeps.append(seconds))
    out = io.StringIO()
    error: BaseException | None = None
    with captured_log() as log, redirect_stdout(out):
        try:
            TapGTMCLI(config=config, state=state).sync_all()
        except Exception as raised:
            error = raised
    text = out.getvalue()
    key_scan.record("tap stdout", text)
    key_scan.record("tap error", repr(error))
    return TapRun(read_messages(text), stdout=text, error=error, log=log.text, sleeps=sleeps)


def sync_in_process(config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[
        list[float], str]:
    """`run_tap_in_process`, raising what stopped the run: (backoff sleeps, stdout)."""
    run = run_tap_in_process(config, monkeypatch)
    if run.error is not None:
        raise run.error
    return run.sleeps, run.stdout
