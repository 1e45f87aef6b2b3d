"""Fixtures of the orchestration tests: real Dagster driving the real `meltano` CLI.

Meltano and the plugin venvs are the ones tests/e2e installs (`.venv-meltano/`,
`.meltano/`), installed here only when missing. One PostgreSQL server (the e2e fixture)
holds Meltano's system database, shared by every run as it would be by every worker,
and the accounts' warehouse. Sandboxes run in this process, one per account, each with
its own key; every output a run produced is scanned for those keys.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.retry import RetryPolicy
from tap_gtmcli.api.timestamps import parse_timestamp
from tap_gtmcli.demo.meltano_project import MeltanoProject
from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tests.e2e.conftest import duckdb_query, postgres_server
from tests.helpers import key_scan
from tests.helpers.keys import API_KEY
from tests.helpers.meltano import installing
from tests.helpers.postgres import PostgresServer

__all__ = ["duckdb_query", "postgres_server"]  # e2e fixtures, used here by name

#: Account B's key: distinct from account A's (API_KEY), so a mix-up shows.
ACCOUNT_B_KEY = "gtm_live_ORCHESTRATION-account-b-4e81d2c7"
key_scan.scan_for(ACCOUNT_B_KEY)  # account A's is the scan's own (tests/helpers/key_scan.py)
#: (plugin type, plugin whose venv the tests run). Inheriting plugins share their
#: parent's venv, so installing the parents is enough.
PLUGIN_VENVS = (("extractors", "tap-gtmcli"), ("loaders", "target-duckdb"),
                ("loaders", "target-postgres"))
SYSTEM_DATABASE = "meltano"


def assert_no_key(*outputs: Any) -> None:
    """Neither account's key, nor its secret part, is in any output."""
    key_scan.assert_no_key(*outputs)
    for index, output in enumerate(outputs):
        text = output if isinstance(output, str) else repr(output)
        assert ACCOUNT_B_KEY not in text, f"account B's key leaked into output #{index}"
        assert ACCOUNT_B_KEY.split("_", 2)[-1] not in text, f"part of a key leaked (#{index})"


def start_sandbox(api_key: str = API_KEY, **settings: Any) -> SandboxServer:
    """An in-process sandbox on a free loopback port whose jobs complete at once."""
    config = {"api_key": api_key, "start_delay": 0, "processing_rate": 0, **settings}
    return SandboxServer(SandboxConfig(**config)).start()


def sandbox_jobs(server: SandboxServer, api_key: str) -> dict[str, dict[str, Any]]:
    """Every job the sandbox lists, by id, read through the public API with its key."""
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
    """The completed state Meltano keeps for a state id in the shared system database."""
    rows = postgres_server.query("select completed_state from state where state_id = "
                                 f"'{state_id}'", database=SYSTEM_DATABASE)
    return json.loads(rows[0][0]) if rows else {}


def meltano_runs(postgres_server: PostgresServer, state_id: str) -> list[list[str]]:
    """(state, started_at, ended_at) of every run Meltano recorded for a state id."""
    return postgres_server.query(
        "select state, extract(epoch from started_at), extract(epoch from ended_at) "
        f"from runs where job_name = '{state_id}' order by id", database=SYSTEM_DATABASE)


@pytest.fixture(scope="session")
def orchestration_dir() -> Iterator[Path]:
    """A temporary directory for the session (logs, warehouses, DAGSTER_HOME)."""
    path = Path(tempfile.mkdtemp(prefix="gtmcli-orchestration-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def meltano_project(orchestration_dir: Path) -> MeltanoProject:
    """The project's Meltano, with the plugins these tests run (installed if missing)."""
    project = MeltanoProject(log_dir=orchestration_dir / "logs")
    with installing(project):
        project.ensure_meltano()
        if not all(project.plugin_python(kind, name).exists() for kind, name in PLUGIN_VENVS):
            project.install([name for _, name in PLUGIN_VENVS])
    return project


@pytest.fixture(scope="session")
def system_database(meltano_project: MeltanoProject, postgres_server: PostgresServer) -> str:
    """Meltano's system database on the PostgreSQL server, migrated once.

    Migrated before any run: two runs starting at once on an empty database would
    both try to create its tables.
    """
    postgres_server.query(f"create database {SYSTEM_DATABASE}")
    uri = f"postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/{SYSTEM_DATABASE}"
    meltano_project.output(["upgrade", "database"], env={"MELTANO_DATABASE_URI": uri})
    return uri


@pytest.fixture(scope="session")
def worker_environment(
    system_database: str, postgres_server: PostgresServer, orchestration_dir: Path
) -> dict[str, str]:
    """What a Dagster worker's environment holds for Meltano, keys aside."""
    return {
        "MELTANO_DATABASE_URI": system_database,
        "MELTANO_ENVIRONMENT": "dev",
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
        "TARGET_DUCKDB_FILEPATH": str(orchestration_dir / "warehouse.duckdb"),
        "TARGET_POSTGRES_PORT": str(postgres_server.port),
        # Trust authentication ignores it, but target-postgres insists on one.
        "TARGET_POSTGRES_PASSWORD": "unused-with-trust-auth",
    }


@pytest.fixture
def in_worker(
    monkeypatch: pytest.MonkeyPatch, worker_environment: dict[str, str]
) -> pytest.MonkeyPatch:
    """This process's environment as a worker's (runs in process inherit it)."""
    for name, value in worker_environment.items():
        monkeypatch.setenv(name, value)
    # The test venv must not leak into Meltano's interpreter (the resource drops it too).
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    return monkeypatch


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a command started from a test (a second worker, the CLI)."""
    return {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, **extra}
