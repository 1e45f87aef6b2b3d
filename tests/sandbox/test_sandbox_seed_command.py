"""`gtmcli-sandbox seed`, run as a real process against a real sandbox process."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator

import pytest
import requests

from tests.helpers.sandboxes import sandbox_command, start_sandbox_cli

KEY = "seed-test-key"


@pytest.fixture
def sandbox_url() -> Iterator[str]:
    processes: list[subprocess.Popen[str]] = []
    _, url = start_sandbox_cli(processes, "--api-key", KEY, "--start-delay", "0")
    yield url
    for process in processes:
        process.terminate()
        process.communicate(timeout=10)


def seed(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*sandbox_command(), "seed", *arguments], capture_output=True,
                          text=True, timeout=30, env={**os.environ, **(env or {})}, check=False)


def get(url: str, path: str) -> dict:
    response = requests.get(url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    response.raise_for_status()
    return response.json()


def test_seed_prints_the_ids_of_the_jobs_it_created(sandbox_url: str) -> None:
    done = seed("--url", sandbox_url, "--api-key", KEY, "--type", "find", "--count", "7",
                "--jobs", "3")
    assert done.returncode == 0, done.stderr
    job_ids = done.stdout.split()
    assert len(job_ids) == 3
    jobs = {job["id"]: job for job in get(sandbox_url, "/v1/jobs")["jobs"]}
    assert set(jobs) == set(job_ids)
    assert {(job["type"], job["status"], job["total"]) for job in jobs.values()} == {
        ("find", "completed", 7)}
    results = get(sandbox_url, f"/v1/jobs/{job_ids[0]}/results?per_page=1000")
    assert len(results["results"]) == 7
    assert done.stderr == f"seeded 3 completed find jobs of 7 items at {sandbox_url}\n"


def test_seed_reads_the_key_from_the_sandbox_variable_and_keeps_the_status(
    sandbox_url: str,
) -> None:
    done = seed("--url", sandbox_url, "--status", "failed",
                env={"GTMCLI_SANDBOX_API_KEY": KEY})
    assert done.returncode == 0, done.stderr
    (job,) = get(sandbox_url, "/v1/jobs")["jobs"]
    assert (job["id"], job["type"], job["status"], job["total"]) == (
        done.stdout.strip(), "validate", "failed", 100)


def test_a_refused_key_is_named_as_a_flag_never_echoed(sandbox_url: str) -> None:
    done = seed("--url", sandbox_url, "--api-key", "not-the-key")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (f"gtmcli-sandbox seed: the sandbox at {sandbox_url} refused the key:"
                           " pass the one it was started with (--api-key, or"
                           " $GTMCLI_SANDBOX_API_KEY)\n")


def test_the_sandbox_s_own_check_of_the_request_is_passed_on(sandbox_url: str) -> None:
    done = seed("--url", sandbox_url, "--api-key", KEY, "--count", "0")
    assert done.returncode == 1
    assert done.stderr == (f"gtmcli-sandbox seed: the sandbox at {sandbox_url} answered 400:"
                           " 'count' must be between 1 and 100000\n")
    assert get(sandbox_url, "/v1/jobs")["jobs"] == []


def test_no_sandbox_listening_is_named_with_its_url() -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    done = seed("--url", url)
    assert done.returncode == 1
    assert done.stderr.startswith(f"gtmcli-sandbox seed: no sandbox answers at {url} (")
    assert done.stderr.endswith("start one with `gtmcli-sandbox`, or pass its URL with --url\n")


def test_a_url_that_is_not_http_is_refused_before_anything_is_opened(tmp_path) -> None:
    target = tmp_path / "not-a-sandbox"
    done = seed("--url", f"file://{target}")
    assert done.returncode == 1
    assert done.stderr == ("gtmcli-sandbox seed: --url must start with http:// or https://"
                           f" (given: 'file://{target}')\n")
    assert not target.exists()
