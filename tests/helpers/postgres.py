"""A throwaway PostgreSQL server on loopback (initdb / pg_ctl as the `postgres` account)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

POSTGRES_BIN = Path(os.environ.get("POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass
class PostgresServer:
    """A PostgreSQL server on 127.0.0.1, trust authentication."""

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

    @property
    def log_path(self) -> Path:
        """The server's log (`-l` of pg_ctl): what `log_statement` writes goes there."""
        return self.data_dir / "server.log"


def postgres_installed() -> bool:
    return (POSTGRES_BIN / "pg_ctl").exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; as root, drop to the postgres account.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def running_postgres(*settings: str) -> Iterator[PostgresServer]:
    """A new cluster started on a free loopback port, stopped and deleted after.

    `settings` are extra `name=value` server settings (`-c`), e.g. `log_statement=all`.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="gtmcli-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data_dir, "postgres", "postgres")
    subprocess.run(
        _as_postgres_user([str(POSTGRES_BIN / "initdb"), "-D", str(data_dir), "-U", "postgres",
                           "-A", "trust", "--no-sync"]),
        check=True, capture_output=True,
    )
    port = free_port()
    options = " ".join([f"-c listen_addresses=127.0.0.1 -p {port} -k {data_dir} -c fsync=off",
                        *(f"-c {setting}" for setting in settings)])
    server = PostgresServer(port, data_dir)
    subprocess.run(
        _as_postgres_user([str(POSTGRES_BIN / "pg_ctl"), "-D", str(data_dir), "-o", options,
                           "-l", str(server.log_path), "-w", "-t", "60", "start"]),
        check=True, capture_output=True,
    )
    try:
        yield server
    finally:
        subprocess.run(
            _as_postgres_user([str(POSTGRES_BIN / "pg_ctl"), "-D", str(data_dir), "-m", "fast",
                               "-w", "stop"]),
            check=False, capture_output=True,
        )
        shutil.rmtree(data_dir, ignore_errors=True)


def session_postgres() -> Iterator[PostgresServer]:
    """For a session fixture: a server on loopback for the session, or every test that
    asks for it skipped, naming why, where PostgreSQL is not installed."""
    if not postgres_installed():
        pytest.skip(f"PostgreSQL binaries not found in {POSTGRES_BIN} (set POSTGRES_BIN)")
    with running_postgres() as server:
        yield server
