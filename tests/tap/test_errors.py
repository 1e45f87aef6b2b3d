"""Failures: what is retried, how long the tap waits, what it says when it gives up."""

from __future__ import annotations

import email.utils
import time
from types import SimpleNamespace

import pytest

from tap_gtmcli.api.errors import GTMCLIAuthError, GTMCLIRetriesExhaustedError
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.sandboxes import LIST_RULE, RESULTS_RULE
from tests.helpers.singer import result_rows
from tests.helpers.tap_runs import run_tap, sync_in_process


def test_retry_after_seconds_is_honoured_exactly(sandbox, tap_config, monkeypatch):
    sandbox.seed_jobs("validate", 3)
    sandbox.add_fault_rules([{**LIST_RULE, "status": 429, "retry_after": "7", "count": 2}])
    sleeps, output = sync_in_process(tap_config, monkeypatch)
    assert sleeps == [7.0, 7.0]
    assert len(result_rows(output)) == 3


def test_retry_after_http_date_is_honoured(sandbox, tap_config, monkeypatch):
    """An HTTP date has 1-second resolution: read against a clock frozen at a whole
    second, a date 30 s ahead means exactly 30 s."""
    sandbox.seed_jobs("validate", 3)
    now = float(int(time.time()))
    monkeypatch.setattr("tap_gtmcli.api.retry.time", SimpleNamespace(time=lambda: now))
    when = email.utils.formatdate(now + 30, usegmt=True)
    sandbox.add_fault_rules([{**LIST_RULE, "status": 429, "retry_after": when, "count": 1}])
    sleeps, output = sync_in_process(tap_config, monkeypatch)
    assert sleeps == [30.0]
    assert len(result_rows(output)) == 3


def test_missing_retry_after_falls_back_to_jittered_exponential_backoff(
    sandbox, tap_config, monkeypatch
):
    sandbox.seed_jobs("validate", 3)
    sandbox.add_fault_rules([{**LIST_RULE, "status": 503, "count": 3}])
    sleeps, _ = sync_in_process(tap_config, monkeypatch)
    assert len(sleeps) == 3
    for retry_number, wait in enumerate(sleeps, start=1):
        assert 0.0 <= wait <= 2 ** (retry_number - 1)


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 502, "body": "html"},
        {"status": 500, "body": "json"},
        {"status": 200, "body": "truncated"},
        {"status": 200, "body": "drop"},
    ],
    ids=["html-502", "json-500", "truncated-json", "dropped-connection"],
)
def test_transient_result_failures_are_retried_and_nothing_is_lost(
    sandbox, tap_config, monkeypatch, fault
):
    job_id = sandbox.seed_jobs("validate", 2500)[0]
    sandbox.add_fault_rules([{**RESULTS_RULE, **fault, "count": 2}])
    sleeps, output = sync_in_process({**tap_config, "results_per_page": 1000}, monkeypatch)
    assert len(sleeps) == 2
    rows = result_rows(output)
    assert sorted(row["row_number"] for row in rows) == list(range(1, 2501))
    assert {row["job_id"] for row in rows} == {job_id}
    assert sandbox.stats()["requests"]["GET /v1/jobs/{id}/results"] == 3 + 2


def test_slow_answer_times_out_and_is_retried(sandbox, tap_config, monkeypatch):
    sandbox.seed_jobs("validate", 3)
    sandbox.add_fault_rules([{**RESULTS_RULE, "body": "slow", "delay": 3.0, "count": 1}])
    sleeps, output = sync_in_process({**tap_config, "request_timeout": 1}, monkeypatch)
    assert len(sleeps) == 1
    assert len(result_rows(output)) == 3


def test_exhausted_retries_fail_naming_endpoint_and_status(sandbox, tap_config, monkeypatch):
    sandbox.seed_jobs("validate", 3)
    sandbox.add_fault_rules([{**LIST_RULE, "status": 503, "count": 10}])
    with pytest.raises(GTMCLIRetriesExhaustedError,
                       match=r"GET /v1/jobs failed after 3 attempt\(s\): GET /v1/jobs answered 503"):
        sync_in_process({**tap_config, "max_retries": 2}, monkeypatch)


def test_bad_key_fails_at_once_naming_the_setting(sandbox, tap_config, monkeypatch):
    sandbox.seed_jobs("validate", 3)
    wrong = "gtm_live_wrong_key_999"
    with pytest.raises(GTMCLIAuthError, match=r"401 .*check the `api_key` setting") as raised:
        sync_in_process({**tap_config, "api_key": wrong}, monkeypatch)
    assert wrong not in str(raised.value)
    assert sandbox.stats()["requests"] == {"GET /v1/jobs": 1}


def test_console_script_exits_non_zero_with_a_clear_message(sandbox, tap_config, tmp_path):
    sandbox.add_fault_rules([{**LIST_RULE, "status": 503, "count": 10}])
    run = run_tap(tmp_path, {**tap_config, "max_retries": 1})
    assert run.returncode != 0
    assert "GET /v1/jobs answered 503" in run.stderr


def test_key_never_appears_in_any_output_of_failing_syncs(sandbox, tap_config, tmp_path):
    sandbox.seed_jobs("validate", 1200, jobs=2)
    sandbox.add_fault_rules([
        {**LIST_RULE, "status": 429, "retry_after": "0", "count": 1},
        {**RESULTS_RULE, "status": 502, "body": "html", "count": 1},
        {**RESULTS_RULE, "status": 200, "body": "drop", "count": 1},
        {**RESULTS_RULE, "status": 200, "body": "truncated", "count": 1},
    ])
    ok = run_tap(tmp_path, {**tap_config, "max_retries": 5})
    sandbox.add_fault_rules([{**LIST_RULE, "status": 500, "count": 10}])
    failed = run_tap(tmp_path, {**tap_config, "max_retries": 1}, state=ok.last_state)
    refused = run_tap(tmp_path, {**tap_config, "api_key": API_KEY + "x"})
    assert ok.returncode == 0 and failed.returncode != 0 and refused.returncode != 0
    for run in (ok, failed, refused):
        assert_no_key(run.stdout)
        assert_no_key(run.stderr)
    assert len(ok.records("job_results")) == 2400
