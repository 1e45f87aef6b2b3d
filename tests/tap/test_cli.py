"""The console script's other modes, as a user runs them: --about, --discover, --test."""

from __future__ import annotations

import json
import subprocess

from tests.helpers.key_scan import assert_no_key
from tests.helpers.tap_runs import TAP


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TAP, *args], capture_output=True, text=True, timeout=120, check=False)


def test_about_lists_every_setting_and_marks_the_key_secret():
    about = json.loads(run("--about", "--format=json").stdout)
    properties = about["settings"]["properties"]
    assert {"api_key", "api_url", "start_date", "job_types", "results_per_page",
            "request_timeout", "max_retries", "max_parallel_requests"} <= set(properties)
    assert properties["api_key"]["secret"] is True
    assert about["settings"]["required"] == ["api_key"]
    assert "activate-version" not in about["capabilities"]


def test_discover_describes_both_streams_with_their_keys(tmp_path, tap_config):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tap_config))
    done = run("--config", str(config), "--discover")
    assert done.returncode == 0, done.stderr
    streams = {s["tap_stream_id"]: s for s in json.loads(done.stdout)["streams"]}
    assert set(streams) == {"jobs", "job_results"}
    assert streams["jobs"]["key_properties"] == ["id"]
    assert streams["job_results"]["key_properties"] == ["job_id", "row_number"]


def test_connection_test_passes_against_the_sandbox(tmp_path, sandbox, tap_config):
    sandbox.seed_jobs("validate", 5)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tap_config))
    done = run("--config", str(config), "--test")
    assert done.returncode == 0, done.stderr
    assert_no_key(done.stdout + done.stderr)


def test_connection_test_fails_on_a_wrong_key(tmp_path, sandbox, tap_config):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**tap_config, "api_key": "gtm_live_wrong"}))
    done = run("--config", str(config), "--test")
    assert done.returncode != 0
    assert "check the `api_key` setting" in done.stderr
