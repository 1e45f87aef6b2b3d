"""Fixtures of the end-to-end tests: one Meltano install, a sandbox, a real PostgreSQL.

The plugin venvs (`.venv-meltano/`, `.meltano/`) are the project's own and are reused
across tests and runs while unchanged; everything a test writes (Meltano's system
database and state, warehouses, logs, the sandbox's jobs) goes to a temporary directory.
The Meltano runner and the PostgreSQL server are tests/helpers/meltano.py and
tests/helpers/postgres.py.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.demo.meltano_project import MeltanoProject, MeltanoRun
from tap_gtmcli.demo.sandbox_process import SandboxProcess
from tests.helpers import key_scan
from tests.helpers.keys import API_KEY
from tests.helpers.meltano import E2E_PLUGINS, GTMCLI_PLUGIN_ENV, Pipelines, installing
from tests.helpers.postgres import PostgresServer, session_postgres
from tests.helpers.warehouse import duckdb_rows


@pytest.fixture(scope="session")
def e2e_dir() -> Iterator[Path]:
    """A temporary directory for the whole e2e session."""
    path = Path(tempfile.mkdtemp(prefix="gtmcli-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def meltano_project(e2e_dir: Path) -> Iterator[MeltanoProject]:
    """Meltano and every plugin installed once (reused across runs), state in e2e_dir.

    This session's run logs are part of the key scan (tests/helpers/key_scan.py), as are
    the output of every `meltano` command (through its pipe) and what Meltano writes of
    its own (`.meltano/logs`, `.meltano/run`: watched by tests/conftest.py).
    """
    started = time.time()
    project = MeltanoProject(
        log_dir=e2e_dir / "logs",
        env={
            "MELTANO_DATABASE_URI": f"sqlite:///{e2e_dir / 'meltano.db'}",
            "MELTANO_ENVIRONMENT": "dev",
            "TARGET_JSONL_DESTINATION_PATH": str(e2e_dir / "jsonl"),
            "TARGET_GTMCLI_LEDGER_PATH": str(e2e_dir / "ledger.jsonl"),
            # The session's own index, not the one in the project's .meltano/.
            "MAPPER_GTMCLI_SUBMISSION_INDEX": str(e2e_dir / "submission_index.sqlite"),
            "TARGET_GTMCLI_SUBMISSION_INDEX": str(e2e_dir / "submission_index.sqlite"),
        },
    )
    (e2e_dir / "jsonl").mkdir()
    key_scan.watch_tree(e2e_dir / "logs", since=started)
    with installing(project):
        project.ensure_meltano()
        project.install(E2E_PLUGINS)
    yield project
    key_scan.assert_clean()
    key_scan.unwatch_tree(e2e_dir / "logs")


@pytest.fixture(scope="session")
def pipelines(meltano_project: MeltanoProject, e2e_dir: Path) -> Iterator[Pipelines]:
    """A sandbox on a free loopback port, with the plugins pointed at it and given the
    key-scanned test key (the environment overrides meltano.yml's `sandbox-key`)."""
    sandbox = SandboxProcess(e2e_dir / "sandbox.db", e2e_dir / "logs" / "sandbox.log",
                             api_key=API_KEY, extra_args=("--start-delay", "0.5"))
    url = sandbox.start()
    meltano_project.env = {
        **meltano_project.env,
        **{f"{plugin}_API_URL": url for plugin in GTMCLI_PLUGIN_ENV},
        **{f"{plugin}_API_KEY": API_KEY for plugin in GTMCLI_PLUGIN_ENV},
    }
    try:
        yield Pipelines(meltano_project, sandbox, e2e_dir)
    finally:
        sandbox.stop()


@pytest.fixture(scope="session")
def submitted(pipelines: Pipelines) -> MeltanoRun:
    """The submit half, run once: the sample contacts are in the sandbox as jobs."""
    return pipelines.run("gtmcli-submit", log_name="submit")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """PostgreSQL started for the session on 127.0.0.1, stopped and deleted after."""
    yield from session_postgres()


@pytest.fixture(scope="session")
def duckdb_query(meltano_project: MeltanoProject) -> Callable[[Path, str], list[list[Any]]]:
    """Runs SQL on a DuckDB file with target-duckdb's own duckdb (the version that wrote it)."""
    return partial(duckdb_rows, meltano_project.plugin_python("loaders", "target-duckdb"))
