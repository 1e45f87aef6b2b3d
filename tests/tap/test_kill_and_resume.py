"""SIGKILL the tap at many points of a multi-job extraction and resume from its last STATE.

Rows lost must be 0 in every trial; re-emitted rows share primary keys with the first
emission, so a target deduplicates them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from tests.tap.conftest import API_KEY, TAP, run_tap

TRIALS = 20
JOBS = 6
ROWS_PER_JOB = 600


def run_until_killed(tmp_path: Path, config: dict, kill_after_rows: int) -> list[dict]:
    """Start the tap, SIGKILL it after it has printed `kill_after_rows` result rows,
    and return every message it had written to the pipe before it died."""
    config_path = tmp_path / "kill-config.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with subprocess.Popen(
        [TAP, "--config", str(config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    ) as process:
        assert process.stdout is not None
        messages, rows = [], 0
        for line in process.stdout:
            message = json.loads(line)
            messages.append(message)
            if message["type"] == "RECORD" and message["stream"] == "job_results":
                rows += 1
                if rows == kill_after_rows:
                    process.send_signal(signal.SIGKILL)
                    break
        # What was already in the pipe reached the "target" before the kill took effect.
        messages += [json.loads(line) for line in process.stdout if line.endswith("\n")]
        process.wait()
    return messages


@pytest.fixture
def seeded(sandbox):
    ids = []
    for _ in range(JOBS):
        ids += sandbox.seed_jobs("validate", ROWS_PER_JOB)
        sandbox.advance_clock(1)
    return ids


def test_sigkill_at_20_points_loses_no_result_row(sandbox, seeded, tmp_path, capsys):
    config = {"api_key": API_KEY, "api_url": sandbox.url, "results_per_page": 200}
    truth = {(job_id, n) for job_id in seeded for n in range(1, ROWS_PER_JOB + 1)}
    kill_points = sorted(random.Random(20261128).sample(range(1, len(truth)), TRIALS))
    duplicates_per_trial = []

    for kill_after in kill_points:
        first = run_until_killed(tmp_path, config, kill_after)
        states = [m["value"] for m in first if m["type"] == "STATE"]
        resumed = run_tap(tmp_path, config, state=states[-1] if states else None)
        assert resumed.returncode == 0, resumed.stderr

        emitted = [
            (m["record"]["job_id"], m["record"]["row_number"])
            for m in first
            if m["type"] == "RECORD" and m["stream"] == "job_results"
        ] + [(row["job_id"], row["row_number"]) for row in resumed.records("job_results")]
        assert truth - set(emitted) == set(), f"rows lost when killed after {kill_after} rows"
        assert set(emitted) <= truth
        duplicates = len(emitted) - len(set(emitted))
        # Resuming redoes at most the job that was in flight when the tap died.
        assert duplicates <= ROWS_PER_JOB
        duplicates_per_trial.append(duplicates)

    with capsys.disabled():
        print(
            f"\nkill-and-resume: {TRIALS} trials, 0 rows lost, duplicate rows per trial "
            f"min {min(duplicates_per_trial)} / max {max(duplicates_per_trial)} "
            f"/ total {sum(duplicates_per_trial)} of {len(truth)} rows"
        )
