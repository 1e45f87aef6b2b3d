"""SIGKILL the tap at many points of a multi-job extraction and resume from its last STATE.

Rows lost must be 0 in every trial, job rows included; re-emitted rows share primary keys
with the first emission, so a target deduplicates them. In BATCH mode the rows are read
from the files the BATCH messages name, as a target would.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.singer import batch_rows
from tests.helpers.tap_runs import TAP, run_tap, run_tap_in_process

TRIALS = 20
JOBS = 6
ROWS_PER_JOB = 600
#: Above ROWS_PER_JOB: files and STATEs span job boundaries.
BATCH_SIZE = 1000


def run_until_killed(
    tmp_path: Path, config: dict, kill_now: Callable[[dict[str, Any]], bool]
) -> tuple[list[dict], str]:
    """Start the tap, SIGKILL it as soon as `kill_now(message)` says so, and return every
    message it had written to the pipe before it died, and its stderr."""
    config_path = tmp_path / "kill-config.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with subprocess.Popen(
        [TAP, "--config", str(config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        messages = []
        for line in process.stdout:
            message = json.loads(line)
            messages.append(message)
            if kill_now(message):
                process.send_signal(signal.SIGKILL)
                break
        # What was already in the pipe reached the "target" before the kill took effect.
        messages += [json.loads(line) for line in process.stdout if line.endswith("\n")]
        stderr = process.stderr.read()
        process.wait()
    return messages, stderr


def result_keys(messages: list[dict]) -> list[tuple[str, int]]:
    """(job_id, row_number) of every result row, from RECORDs and from BATCH files."""
    rows = [m["record"] for m in messages if m["type"] == "RECORD" and m["stream"] == "job_results"]
    return [(row["job_id"], row["row_number"])
            for row in rows + batch_rows(messages, "job_results")]


def job_ids(messages: list[dict]) -> set[str]:
    rows = [m["record"] for m in messages if m["type"] == "RECORD" and m["stream"] == "jobs"]
    return {row["id"] for row in rows + batch_rows(messages, "jobs")}


@pytest.fixture
def seeded(sandbox):
    ids = []
    for _ in range(JOBS):
        ids += sandbox.seed_jobs("validate", ROWS_PER_JOB)
        sandbox.advance_clock(1)
    return ids


def kill_after_rows(count: int) -> Callable[[dict[str, Any]], bool]:
    seen = [0]

    def kill_now(message: dict[str, Any]) -> bool:
        seen[0] += len(result_keys([message]))
        return seen[0] >= count

    return kill_now


def kill_after_messages(count: int) -> Callable[[dict[str, Any]], bool]:
    seen = [0]

    def kill_now(message: dict[str, Any]) -> bool:
        seen[0] += 1
        return seen[0] >= count

    return kill_now


def gzip_content(data: bytes) -> bytes:
    """What a gzip file holds, all of it; of a file a killed run was writing (no BATCH
    message names it), what was written before the kill."""
    content = []
    while data:
        member = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        content.append(member.decompress(data))
        if not member.eof:
            break  # cut short by the kill
        data = member.unused_data
    return b"".join(content)


@pytest.mark.parametrize("mode", ["RECORD", "BATCH"])
def test_sigkill_at_many_points_loses_no_row(sandbox, seeded, tmp_path, print_figures, mode,
                                            monkeypatch):
    config: dict[str, Any] = {"api_key": API_KEY, "api_url": sandbox.url, "results_per_page": 200}
    if mode == "BATCH":
        config["batch_config"] = {
            "encoding": {"format": "jsonl", "compression": "gzip"},
            "storage": {"root": (tmp_path / "batches").as_uri()}, "batch_size": BATCH_SIZE,
        }
    truth = {(job_id, n) for job_id in seeded for n in range(1, ROWS_PER_JOB + 1)}
    if mode == "RECORD":
        points = sorted(random.Random(20261128).sample(range(1, len(truth)), TRIALS))
        kills = [kill_after_rows(point) for point in points]
    else:
        # A BATCH run is a few dozen messages: kill after each one of them in turn.
        whole = run_tap(tmp_path, config)
        assert whole.returncode == 0, whole.stderr
        kills = [kill_after_messages(n) for n in range(1, len(whole.messages))]
    duplicates_per_trial = []

    for trial, kill_now in enumerate(kills):
        first, first_stderr = run_until_killed(tmp_path, config, kill_now)
        states = [m["value"] for m in first if m["type"] == "STATE"]
        # The killed run is a real process; the resumed one runs here (a new tap from the
        # last STATE, as the next scheduled run would be), which spares a second Python
        # start-up per trial.
        resumed = run_tap_in_process(config, monkeypatch, state=states[-1] if states else None)
        assert resumed.ok, f"{resumed.error!r}\n{resumed.log[-2000:]}"
        assert_no_key(json.dumps(first), first_stderr, resumed.stdout, resumed.log)

        emitted = result_keys(first) + result_keys(resumed.messages)
        assert truth - set(emitted) == set(), f"rows lost in {mode} trial {trial}"
        assert set(emitted) <= truth
        assert job_ids(first) | job_ids(resumed.messages) == set(seeded), (
            f"job rows lost in {mode} trial {trial}")
        duplicates = len(emitted) - len(set(emitted))
        # Resuming redoes at most the job in flight when the tap died (BATCH mode: and
        # the jobs finished since the last STATE, less than batch_size rows).
        assert duplicates <= ROWS_PER_JOB + (BATCH_SIZE if mode == "BATCH" else 0)
        duplicates_per_trial.append(duplicates)

    for path in (tmp_path / "batches").glob("*.gz"):
        assert_no_key(gzip_content(path.read_bytes()))  # nor its tail

    print_figures(
        f"kill-and-resume ({mode}): {len(kills)} trials, 0 rows lost, duplicate rows "
        f"per trial min {min(duplicates_per_trial)} / max {max(duplicates_per_trial)} "
        f"/ total {sum(duplicates_per_trial)} of {len(truth)} rows"
    )
