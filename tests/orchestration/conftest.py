"""Fixtures of the orchestration tests: real Dagster driving the real `meltano` CLI.

Meltano and the plugin venvs are the ones tests/e2e installs (`.venv-meltano/`,
`.meltano/`), installed here only when missing. One PostgreSQL server holds Meltano's
system database, shared by every run as it would be by every worker, and the accounts'
warehouse. Sandboxes run in this process, one per account, each with its own key; every
output a run produced is scanned for those keys. What the tests share besides fixtures
is tests/helpers/orchestration.py.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.demo.meltano_project import MeltanoProject
from tests.helpers.meltano import installing
from tests.helpers.orchestration import PLUGIN_VENVS, SYSTEM_DATABASE
from tests.helpers.postgres import PostgresServer, session_postgres
from tests.helpers.warehouse import duckdb_rows


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


# tests/e2e/conftest.py's two fixtures of these names, defined here as well: a conftest's
# fixtures reach only its own folder, and nothing imports from a conftest. (Imported, as
# they were, they were this folder's own fixtures all the same, with a server of its own.)
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """PostgreSQL started for the session on 127.0.0.1, stopped and deleted after."""
    yield from session_postgres()


@pytest.fixture(scope="session")
def duckdb_query(meltano_project: MeltanoProject) -> Callable[[Path, str], list[list[Any]]]:
    """Runs SQL on a DuckDB file with target-duckdb's own duckdb (the version that wrote it)."""
    return partial(duckdb_rows, meltano_project.plugin_python("loaders", "target-duckdb"))
