"""What the orchestration tests (tests/orchestration/) share: real Dagster driving the
real `meltano` CLI, with Meltano's system database on the session's PostgreSQL.

- Account B's key (account A's is API_KEY), in the key scan from import on.
- The plugins the tests run and the system database's name (the conftest's fixtures).
- What a run left, read back: an account's jobs through its own key, the `jobs`
  bookmark they settle to, the state and the runs Meltano stored.
- Starting things from a test: the environment of a child process, the `dagster` CLI,
  waiting on a condition.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.retry import RetryPolicy
from tap_gtmcli.api.timestamps import parse_timestamp
from tap_gtmcli.sandbox import SandboxServer
from tests.helpers import key_scan
from tests.helpers.postgres import PostgresServer

#: Account B's key: distinct from account A's (API_KEY), so a mix-up shows.
ACCOUNT_B_KEY = "gtm_live_ORCHESTRATION-account-b-4e81d2c7"
# From here on key_scan.assert_no_key, and the scan after every test, look for it too.
key_scan.scan_for(ACCOUNT_B_KEY)
#: (plugin type, plugin whose venv the tests run). Inheriting plugins share their
#: parent's venv, so installing the parents is enough.
PLUGIN_VENVS = (("extractors", "tap-gtmcli"), ("loaders", "target-duckdb"),
                ("loaders", "target-postgres"))
SYSTEM_DATABASE = "meltano"
#: The `dagster` CLI of the test venv.
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def jobs_by_id(server: SandboxServer, api_key: str) -> dict[str, dict[str, Any]]:
    """Every job the sandbox lists, by id, read through the public API with `api_key`.

    Not tests/helpers/sandboxes.py's `sandbox_jobs`: that one reads with API_KEY, which
    account B's sandbox refuses.
    """
    client = GTMCLIClient(api_url=server.url, api_key=api_key, retry=RetryPolicy(max_retries=0))
    try:
        return {job["id"]: job for job in client.list_jobs()}
    finally:
        client.close()


def settled_jobs_bookmark(jobs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The `jobs` bookmark once every job is extracted and settled: the newest job (ids
    created in that same moment, sorted), no open job, and the SDK's replication key
    (`created_at`) at the newest job's."""
    moments = {job_id: parse_timestamp(job["created_at"]) for job_id, job in jobs.items()}
    newest = max(moments.values())
    newest_ids = sorted(job_id for job_id, moment in moments.items() if moment == newest)
    created_at = jobs[newest_ids[0]]["created_at"]
    return {"newest_created_at": created_at, "newest_ids": newest_ids, "open_jobs": {},
            "replication_key": "created_at", "replication_key_value": created_at}


def jobs_bookmark(state: Mapping[str, Any]) -> dict[str, Any]:
    """The stored `jobs` bookmark, its `newest_ids` sorted (their order is the emit order)."""
    bookmark = dict(state["singer_state"]["bookmarks"]["jobs"])
    bookmark["newest_ids"] = sorted(bookmark["newest_ids"])
    return bookmark


def stored_state(postgres_server: PostgresServer, state_id: str) -> dict[str, Any]:
    """The completed state Meltano keeps for a state id in the shared system database.

    Read from the database itself: tests/helpers/meltano.py's `Pipelines.state` asks
    `meltano state get` of the e2e session's project, whose system database is SQLite.
    """
    rows = postgres_server.query("select completed_state from state where state_id = "
                                 f"'{state_id}'", database=SYSTEM_DATABASE)
    return json.loads(rows[0][0]) if rows else {}


def meltano_runs(postgres_server: PostgresServer, state_id: str) -> list[list[str]]:
    """(state, started_at, ended_at) of every run Meltano recorded for a state id."""
    return postgres_server.query(
        "select state, extract(epoch from started_at), extract(epoch from ended_at) "
        f"from runs where job_name = '{state_id}' order by id", database=SYSTEM_DATABASE)


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a command started from a test (a second worker, the CLI).

    This process's environment without the test venv, plus `extra`: unlike
    `base_environment` (tap_gtmcli.demo.meltano_project), nothing else is dropped or set.
    """
    return {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, **extra}


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """`check()`'s first truthy value, polled every 0.25 s; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)

