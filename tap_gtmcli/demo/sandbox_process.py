"""The GTMCLI sandbox as a background process, for the demo and the e2e tests."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from tap_gtmcli.api.client import FINISHED_STATUSES
from tap_gtmcli.api.paging import iterate_pages
from tap_gtmcli.api.retry import poll_until
from tap_gtmcli.sandbox.config import DEFAULT_API_KEY

LISTENING_PREFIX = "gtmcli-sandbox listening on "
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


class SandboxStartError(RuntimeError):
    """The sandbox exited or stayed silent instead of announcing its URL."""


class SandboxProcess:
    """`python -m tap_gtmcli.sandbox` on a free loopback port, with its jobs in `db_path`."""

    def __init__(
        self,
        db_path: Path,
        log_path: Path,
        *,
        api_key: str = DEFAULT_API_KEY,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.db_path = db_path
        self.log_path = log_path
        self.api_key = api_key
        self.extra_args = extra_args
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start the server and return its base URL once it listens."""
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "tap_gtmcli.sandbox", "--port", "0",
            "--api-key", self.api_key, "--db", str(self.db_path), *self.extra_args,
        ]
        # The log file, not a pipe: a pipe nobody reads would block a chatty server.
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith(LISTENING_PREFIX):
                    self.url = line.removeprefix(LISTENING_PREFIX).strip()
                    return self.url
            if self._process.poll() is not None:
                raise SandboxStartError(
                    f"gtmcli-sandbox exited with code {self._process.returncode}; "
                    f"see {self.log_path}"
                )
            time.sleep(0.05)
        self.stop()
        raise SandboxStartError(f"gtmcli-sandbox did not start in {START_TIMEOUT_SECONDS:.0f}s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it hangs)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def get(self, path: str) -> Any:
        """GET a path (API or `/_sandbox/` route) with the key and return the JSON body."""
        response = requests.get(
            self.url + path, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30
        )
        response.raise_for_status()
        return response.json()

    def jobs(self) -> list[dict[str, Any]]:
        """Every job the sandbox knows, following pages if the list is paginated."""
        pages = iterate_pages(lambda page: self.get(f"/v1/jobs?page={page}"))
        return [job for body in pages for job in body.get("jobs") or []]

    def wait_until_jobs_settle(self, timeout: float, poll: float = 0.5) -> list[dict[str, Any]]:
        """Poll until every job is completed or failed; return the jobs."""
        jobs = poll_until(
            self.jobs,
            lambda jobs: all(job.get("status") in FINISHED_STATUSES for job in jobs),
            pauses=itertools.repeat(poll),
            deadline=time.monotonic() + timeout,
            clock=time.monotonic,
            sleep=time.sleep,
        )
        open_jobs = [job["id"] for job in jobs if job.get("status") not in FINISHED_STATUSES]
        if open_jobs:
            raise TimeoutError(f"jobs still open after {timeout:.0f}s: {open_jobs}")
        return jobs

    def __enter__(self) -> SandboxProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
