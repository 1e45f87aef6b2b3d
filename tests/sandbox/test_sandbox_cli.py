"""The `gtmcli-sandbox` console script, run as a real process."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers.sandboxes import sandbox_command, start_sandbox_cli

SECRET = "gtm_live_never_log_me"


@pytest.fixture
def run_sandbox() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_cli_serves_and_exits_cleanly_on_sigterm(
    run_sandbox: list[subprocess.Popen[str]],
) -> None:
    process, url = start_sandbox_cli(run_sandbox, "--api-key", SECRET, "--start-delay", "0",
                                     "--processing-rate", "0", "--log-level", "DEBUG",
                                     "--tier", "scale")
    with requests.Session() as session:
        session.trust_env = False
        session.headers["Authorization"] = f"Bearer {SECRET}"
        created = session.post(f"{url}/v1/jobs", timeout=5,
                               json={"type": "validate", "data": [{"email": "a@gmail.com"}]})
        assert created.status_code == 201
        job = session.get(f"{url}/v1/jobs/{created.json()['id']}", timeout=5)
        assert job.json()["status"] == "completed"
        assert job.headers["X-RateLimit-Tier"] == "scale"
        assert session.get(f"{url}/v1/jobs", timeout=5,
                           headers={"Authorization": "Bearer wrong"}).status_code == 401
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert stdout == ""  # exactly one line, already read
    assert "GET /v1/jobs/" in stderr  # request lines are logged at debug level ...
    assert SECRET not in stderr  # ... but never the key
    assert "wrong" not in stderr


def test_cli_sigint_and_env_key(run_sandbox: list[subprocess.Popen[str]]) -> None:
    process, url = start_sandbox_cli(run_sandbox, env={"GTMCLI_SANDBOX_API_KEY": "from-env"})
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(f"{url}/v1/jobs", headers={"Authorization": "Bearer from-env"},
                               timeout=5)
        assert response.json() == {"jobs": []}
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=10)
    assert process.returncode == 0


def test_cli_restart_on_a_database(
    run_sandbox: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    database = str(tmp_path / "cli.db")
    with requests.Session() as session:
        session.trust_env = False
        session.headers["Authorization"] = "Bearer sandbox-key"
        process, url = start_sandbox_cli(run_sandbox, "--db", database, "--start-delay", "0")
        job_ids = session.post(f"{url}/_sandbox/seed", json={"type": "validate", "count": 10},
                               timeout=5).json()["job_ids"]
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
        process, url = start_sandbox_cli(run_sandbox, "--db", database)
        jobs = session.get(f"{url}/v1/jobs", timeout=5).json()["jobs"]
        assert [job["id"] for job in jobs] == job_ids
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
        assert process.returncode == 0


def test_cli_creates_the_missing_folders_of_its_database(
    run_sandbox: list[subprocess.Popen[str]], tmp_path: Path,
) -> None:
    database = tmp_path / "output" / "nested" / "sandbox.db"
    process, url = start_sandbox_cli(run_sandbox, "--db", str(database), "--api-key", "k",
                                     "--start-delay", "0", "--processing-rate", "0")
    with requests.Session() as session:
        session.trust_env = False
        created = session.post(f"{url}/v1/jobs", headers={"Authorization": "Bearer k"},
                               json={"type": "validate", "data": [{"email": "a@gmail.com"}]},
                               timeout=5)
        assert created.status_code == 201
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    # The job is in the file the flag named, in the folders the sandbox created.
    with sqlite3.connect(database) as connection:
        assert connection.execute("select count(*) from jobs").fetchone() == (1,)



@pytest.mark.parametrize(
    "arguments",
    [["--host", "0.0.0.0"], ["--tier", "platinum"], ["--create-status", "204"],
     ["--error-share", "1.5"], ["--retry-after-format", "minutes"], ["--rate-limit", "60"],
     ["--rate-algo", "fixed"], ["--rate-headers", "some"]],
)
def test_cli_rejects_bad_flags(arguments: list[str]) -> None:
    result = subprocess.run([*sandbox_command(), "--port", "0", *arguments],
                            capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
