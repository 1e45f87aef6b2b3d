"""SIGTERM/SIGINT in the mapper and the target while the loader reads slowly: whole
lines only, a STATE never released past what was submitted, exit 128 + the signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.mapper_runs import MAPPER, mapper_settings
from tests.helpers.sandboxes import fast_sandbox, received_items
from tests.helpers.singer import singer_text
from tests.helpers.submit_oracle import contacts_input
from tests.helpers.tap_runs import cli_environment

TARGET = str(Path(MAPPER).with_name("target-gtmcli"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_mapper_leaves_whole_lines_and_only_confirmed_states(signum, tmp_path):
    with fast_sandbox() as server:
        config = tmp_path / "config.json"
        config.write_text(json.dumps(mapper_settings(server, batch_size=2000)))
        source = tmp_path / "input.jsonl"
        source.write_text(singer_text(contacts_input(60_000, state_every=2000)))
        with source.open("rb") as stdin:
            mapper = subprocess.Popen([MAPPER, "--config", str(config)], stdin=stdin,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env=cli_environment())
            assert mapper.stdout is not None
            taken = b""
            while len(taken) < 400_000:  # a slow loader: read some, let the pipe fill
                taken += os.read(mapper.stdout.fileno(), 65_536)
            time.sleep(0.5)
            mapper.send_signal(signum)
            rest, stderr = mapper.communicate(timeout=60)
        assert mapper.returncode == 128 + signum, stderr.decode()[-2000:]
        output = (taken + rest).decode()
        assert output.endswith("\n")
        messages = [json.loads(line) for line in output.splitlines()]  # every line whole
        records = [m for m in messages if m["type"] == "RECORD"]
        assert 0 < len(records) < 60_000  # stopped part-way
        # Every STATE released covers records GTMCLI received.
        states = [m["value"]["bookmarks"]["contacts"]["position"] for m in messages
                  if m["type"] == "STATE"]
        submitted = set(received_items(server))
        assert states, "no STATE was released before the signal"
        assert len(submitted) >= max(states)  # contacts 1..position have distinct emails


def test_a_signalled_target_exits_with_the_signal_and_no_traceback(tmp_path):
    with fast_sandbox() as server:
        config = tmp_path / "config.json"
        config.write_text(json.dumps(mapper_settings(server, batch_size=2000)))
        target = subprocess.Popen([TARGET, "--config", str(config)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_environment())
        assert target.stdin is not None
        target.stdin.write(singer_text(contacts_input(3000, state_every=1000)).encode())
        target.stdin.flush()
        time.sleep(1.0)  # waiting for more input, as a target behind a slow tap does
        target.send_signal(signal.SIGTERM)
        _out, stderr = target.communicate(timeout=30)
        assert target.returncode == 143, stderr.decode()[-2000:]
        assert b"Traceback" not in stderr
        assert b"Stopped by signal 15" in stderr
