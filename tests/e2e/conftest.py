"""Fixtures of the end-to-end tests: one Meltano install, a sandbox, a real PostgreSQL.

The plugin venvs (`.venv-meltano/`, `.meltano/`) are the project's own and are reused
across tests and runs while unchanged; everything a test writes (Meltano's system
database and state, warehouses, logs, the sandbox's jobs) goes to a temporary directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.demo.meltano_project import MeltanoProject, MeltanoRun
from tap_gtmcli.demo.sandbox_process import SandboxProcess
from tap_gtmcli.demo.steps import StepFailedError
from tests import key_scan
from tests.key_scan import TEST_API_KEY

E2E_PLUGINS = ("tap-spreadsheets", "mapper-gtmcli", "tap-gtmcli", "target-gtmcli",
               "target-jsonl", "target-duckdb", "target-postgres")
GTMCLI_PLUGIN_ENV = ("TAP_GTMCLI", "MAPPER_GTMCLI", "TARGET_GTMCLI")
POSTGRES_BIN = Path(os.environ.get("POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
JOB_SETTLE_SECONDS = 120.0


@dataclass
class Pipelines:
    """The Meltano project wired to this session's sandbox and temporary directory."""

    project: MeltanoProject
    sandbox: SandboxProcess
    workdir: Path

    def run(self, *arguments: str, log_name: str, env: dict[str, str] | None = None,
            on_progress: Callable[[str], None] | None = None) -> MeltanoRun:
        """`meltano run ...` against the sandbox; a failure shows the end of its log.

        `on_progress` gets each progress line (PROGRESS_PATTERN) the moment Meltano
        prints it; the log file itself is written in blocks.
        """
        try:
            return self.project.run(["run", *arguments], log_name=log_name, env=env,
                                    on_progress=on_progress)
        except StepFailedError as error:
            log = error.log_path.read_text() if error.log_path else ""
            errors = [line for line in log.splitlines() if "[error" in line][:20]
            pytest.fail("\n".join([str(error), *errors, error.log_tail()]))

    def state(self, state_id: str) -> dict[str, Any]:
        """`meltano state get STATE_ID`, parsed."""
        return json.loads(self.project.output(["state", "get", state_id]))

    def sandbox_truth(self) -> tuple[dict[str, dict[str, Any]], int]:
        """Once every job is settled: the jobs by id, and the result rows they hold."""
        jobs = self.sandbox.wait_until_jobs_settle(JOB_SETTLE_SECONDS)
        rows = sum(int(job["total"]) for job in jobs if job["status"] == "completed")
        return {job["id"]: job for job in jobs}, rows


@contextmanager
def installing(project: MeltanoProject) -> Iterator[None]:
    """Held while Meltano and the plugins are checked and installed: the pytest-xdist
    workers share the project's `.venv-meltano/` and `.meltano/`, and the first one to
    get here builds them while the others wait (an exclusive flock on the project root)."""
    handle = os.open(project.root, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


@pytest.fixture(scope="session")
def e2e_dir() -> Iterator[Path]:
    """A temporary directory for the whole e2e session."""
    path = Path(tempfile.mkdtemp(prefix="gtmcli-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def meltano_project(e2e_dir: Path) -> Iterator[MeltanoProject]:
    """Meltano and every plugin installed once (reused across runs), state in e2e_dir.

    What Meltano writes of its own during the session (`.meltano/logs`, where `meltano
    elt` keeps logs; `.meltano/run`, the plugins' state and logging files) and this
    session's run logs are part of the key scan (tests/key_scan.py), as is the output of
    every `meltano` command (through its pipe).
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
    scanned = (project.root / ".meltano" / "logs", project.root / ".meltano" / "run",
               e2e_dir / "logs")
    for directory in scanned:
        key_scan.watch_tree(directory, since=started)
    with installing(project):
        project.ensure_meltano()
        project.install(E2E_PLUGINS)
    yield project
    key_scan.assert_clean()
    for directory in scanned:
        key_scan.unwatch_tree(directory)


@pytest.fixture(scope="session")
def pipelines(meltano_project: MeltanoProject, e2e_dir: Path) -> Iterator[Pipelines]:
    """A sandbox on a free loopback port, with the plugins pointed at it and given the
    key-scanned test key (the environment overrides meltano.yml's `sandbox-key`)."""
    sandbox = SandboxProcess(e2e_dir / "sandbox.db", e2e_dir / "logs" / "sandbox.log",
                             api_key=TEST_API_KEY, extra_args=("--start-delay", "0.5"))
    url = sandbox.start()
    meltano_project.env = {
        **meltano_project.env,
        **{f"{plugin}_API_URL": url for plugin in GTMCLI_PLUGIN_ENV},
        **{f"{plugin}_API_KEY": TEST_API_KEY for plugin in GTMCLI_PLUGIN_ENV},
    }
    try:
        yield Pipelines(meltano_project, sandbox, e2e_dir)
    finally:
        sandbox.stop()


@pytest.fixture(scope="session")
def submitted(pipelines: Pipelines) -> MeltanoRun:
    """The submit half, run once: the sample contacts are in the sandbox as jobs."""
    return pipelines.run("gtmcli-submit", log_name="submit")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL server on loopback, trust authentication."""

    port: int
    data_dir: Path

    def query(self, sql: str, database: str = "postgres") -> list[list[str]]:
        """Rows of a query, as text, through psql."""
        result = subprocess.run(
            [str(POSTGRES_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database, "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, check=True,
        )
        return [line.split("\t") for line in result.stdout.splitlines()]


def _as_postgres_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; as root, drop to the postgres account.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """PostgreSQL started for the session on 127.0.0.1, stopped and deleted after."""
    if not (POSTGRES_BIN / "pg_ctl").exists():
        pytest.skip(f"PostgreSQL binaries not found in {POSTGRES_BIN} (set POSTGRES_BIN)")
    data_dir = Path(tempfile.mkdtemp(prefix="gtmcli-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data_dir, "postgres", "postgres")
    subprocess.run(
        _as_postgres_user([str(POSTGRES_BIN / "initdb"), "-D", str(data_dir), "-U", "postgres",
                           "-A", "trust", "--no-sync"]),
        check=True, capture_output=True,
    )
    port = _free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data_dir} -c fsync=off"
    subprocess.run(
        _as_postgres_user([str(POSTGRES_BIN / "pg_ctl"), "-D", str(data_dir), "-o", options,
                           "-l", str(data_dir / "server.log"), "-w", "-t", "60", "start"]),
        check=True, capture_output=True,
    )
    try:
        yield PostgresServer(port, data_dir)
    finally:
        subprocess.run(
            _as_postgres_user([str(POSTGRES_BIN / "pg_ctl"), "-D", str(data_dir), "-m", "fast",
                               "-w", "stop"]),
            check=False, capture_output=True,
        )
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def duckdb_query(meltano_project: MeltanoProject) -> Callable[[Path, str], list[list[Any]]]:
    """Runs SQL on a DuckDB file with target-duckdb's own duckdb (the version that wrote it)."""
    python = meltano_project.plugin_python("loaders", "target-duckdb")

    def query(path: Path, sql: str) -> list[list[Any]]:
        script = (
            "import duckdb, json, sys\n"
            "rows = duckdb.connect(sys.argv[1], read_only=True).execute(sys.argv[2]).fetchall()\n"
            "print(json.dumps([list(row) for row in rows], default=str))\n"
        )
        result = subprocess.run([str(python), "-c", script, str(path), sql],
                                capture_output=True, text=True, check=True)
        return json.loads(result.stdout)

    return query
