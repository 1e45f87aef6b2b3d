"""Sandboxes a test starts (in this process, or `gtmcli-sandbox` as a process of its own),
what they received, and the clients and webhook receivers that talk to them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.retry import RetryPolicy
from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tests.helpers.keys import API_KEY

#: Keys of `server.stats()["requests"]`: the requests a sandbox received, by route.
LIST = "GET /v1/jobs"
ONE_JOB = "GET /v1/jobs/{id}"
RESULTS = "GET /v1/jobs/{id}/results"
#: Fault rules (`server.add_fault_rules`) for the job list and for any job's results.
LIST_RULE = {"method": "GET", "path_prefix": "/v1/jobs"}
RESULTS_RULE = {"method": "GET", "path_prefix": "/v1/jobs/job_"}

#: The slow sandbox (`slow_sandbox_server`): a job starts an hour after its create, so
#: none moves until a test pushes the clock (`start_jobs`); then RATE items a second.
START_DELAY = 3600.0
RATE = 2000.0


def fast_sandbox(**settings: Any) -> SandboxServer:
    """An in-process sandbox on 127.0.0.1 (use as a context manager, or `.start()` it)
    that takes `API_KEY` and whose jobs complete the moment they are created."""
    config = {"api_key": API_KEY, "start_delay": 0, "processing_rate": 0, **settings}
    return SandboxServer(SandboxConfig(**config))


def slow_sandbox_server(**settings: Any) -> SandboxServer:
    """An in-process sandbox (use as a context manager) whose jobs start only when the
    test moves its clock (`start_jobs`), then process at RATE items a second."""
    config = {"api_key": API_KEY, "start_delay": START_DELAY, "processing_rate": RATE,
              **settings}
    return SandboxServer(SandboxConfig(**config))


def create_jobs(sandbox: SandboxServer, sizes: list[int]) -> list[str]:
    """One validate job of each size, a second of sandbox time apart; their ids."""
    ids = []
    for number, size in enumerate(sizes):
        items = [{"email": f"person{n}@job{number}.example.com"} for n in range(size)]
        ids.append(sandbox.create_job("validate", items)["id"])
        sandbox.advance_clock(1)  # distinct created_at, so the order is plain
    return ids


def start_jobs(sandbox: SandboxServer) -> None:
    """Push the clock so that the last job created starts now, each earlier one a second
    before the next (create_jobs spaced them so)."""
    sandbox.advance_clock(START_DELAY - 1)


def result_truth(sandbox: SandboxServer, job_ids: Iterable[str]) -> set[tuple[str, int]]:
    """(job_id, row_number) of every result row the given jobs hold once done, whatever
    their status now (`seeded_truth` is what the sandbox can serve at this moment)."""
    return {(job_id, n) for job_id in job_ids
            for n in range(1, sandbox.get_job(job_id)["total"] + 1)}


#: What one scripted `POST /v1/jobs` does (see `script_creates`), as a fault rule.
CREATE_STEPS: dict[str, dict[str, Any]] = {
    # Answered normally: a placeholder that lets the rules after it wait their turn.
    "ok": {"status": 200, "body": "slow", "delay": 0},
    # Out of credits: nothing created.
    "402": {"status": 402},
    # The job is created, then the connection closes without an answer.
    "answer-lost": {"body": "drop_after"},
    # The API's own 503: nothing created, but a client cannot know that.
    "503": {"status": 503},
    # The connection closes before anything is created, without an answer.
    "dropped": {"body": "drop"},
}


def script_creates(server: SandboxServer, *steps: str) -> None:
    """The sandbox's next creates do what `steps` (CREATE_STEPS) say, one each, in
    order; the creates after them are answered normally."""
    server.add_fault_rules([{"method": "POST", "path_prefix": "/v1/jobs", **CREATE_STEPS[step]}
                            for step in steps])


def creates_seen(server: SandboxServer) -> int:
    """How many `POST /v1/jobs` the sandbox received, answered or not."""
    return int(server.stats()["requests"].get("POST /v1/jobs", 0))


def sandbox_jobs(server: SandboxServer | str) -> list[dict]:
    """Every job the sandbox lists, oldest first (admin view through the public API)."""
    url = server if isinstance(server, str) else server.url
    client = GTMCLIClient(api_url=url, api_key=API_KEY, retry=RetryPolicy(max_retries=0))
    try:
        return list(reversed(list(client.list_jobs())))
    finally:
        client.close()


def job_ids(server: SandboxServer | str) -> set[str]:
    """The ids of every job the sandbox holds."""
    return {job["id"] for job in sandbox_jobs(server)}


def job_items(server: SandboxServer | str, job_id: str) -> list[dict]:
    """The items of one job exactly as submitted (in process, or the admin route)."""
    if not isinstance(server, str):
        return server.job_items(job_id)
    answer = requests.get(f"{server}/_sandbox/jobs/{job_id}/items",
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    answer.raise_for_status()
    return list(answer.json()["items"])


def item_key(item: dict) -> tuple:
    """A submitted item as a tuple: ("validate", email) or ("find", first, last, domain)."""
    if set(item) == {"email"}:
        return ("validate", item["email"])
    return ("find", item["first_name"], item["last_name"], item["domain"])


def received_items(
    server: SandboxServer | str, job_ids: Iterable[str] | None = None
) -> list[tuple]:
    """Every item the sandbox received, across its jobs (or the given ones), as tuples."""
    ids = [job["id"] for job in sandbox_jobs(server)] if job_ids is None else list(job_ids)
    return [item_key(item) for job_id in ids for item in job_items(server, job_id)]


def received_jobs(
    server: SandboxServer | str, skip: Iterable[str] = ()
) -> list[tuple[str, tuple]]:
    """(type, items) of every job the sandbox holds, oldest first."""
    skipped = set(skip)
    return [
        (job["type"], tuple(item_key(item) for item in job_items(server, job["id"])))
        for job in sandbox_jobs(server)
        if job["id"] not in skipped
    ]


def submitted_jobs(server: SandboxServer | str) -> list[tuple[str, list[dict]]]:
    """(type, items) of every job the sandbox holds, oldest first, each item the whole
    dict the client sent.

    Not `received_jobs`: its tuples (`item_key`) keep only the fields that name an item,
    so a find item sent with a stray field (an `email`, say) would still compare equal.
    The mapper's payload tests compare what went over the wire, field for field."""
    return [(job["type"], job_items(server, job["id"])) for job in sandbox_jobs(server)]


def seeded_truth(server: SandboxServer) -> set[tuple[str, int]]:
    """(job_id, row_number) of every result row the sandbox can serve."""
    keys: set[tuple[str, int]] = set()
    for job in sandbox_jobs(server):
        if job["status"] == "completed":
            keys |= {(job["id"], n) for n in range(1, job["total"] + 1)}
    return keys


def sandbox_command() -> list[str]:
    """The `gtmcli-sandbox` console script, or `python -m tap_gtmcli.sandbox` where the
    script is not installed next to this interpreter."""
    script = Path(sys.executable).with_name("gtmcli-sandbox")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tap_gtmcli.sandbox"]


#: The one line `gtmcli-sandbox` prints on stdout once it listens.
LISTENING = re.compile(r"^gtmcli-sandbox listening on (http://127\.0\.0\.1:(\d+))$")


def start_sandbox_cli(processes: list[subprocess.Popen[str]], *arguments: str,
                      env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """`gtmcli-sandbox --port 0 ARGUMENTS` (`env` added to the environment), added to
    `processes` for the caller to stop; returns it and its URL.

    Not `start_sandbox_process`: this one takes any flags, keeps stderr, and asserts the
    first stdout line is exactly the announcement the CLI tests check."""
    process = subprocess.Popen(
        [*sandbox_command(), "--port", "0", *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )
    processes.append(process)
    assert process.stdout is not None
    match = LISTENING.match(process.stdout.readline().rstrip("\n"))
    assert match, "the first stdout line must announce the URL"
    return process, match.group(1)


def start_sandbox_process(
    db: Path, *, api_key: str = API_KEY, port: int = 0, latency_ms: int = 0
) -> tuple[subprocess.Popen, str]:
    """`gtmcli-sandbox --db DB` as a process of its own; returns it and its URL."""
    process = subprocess.Popen(
        [*sandbox_command(), "--port", str(port), "--api-key", api_key, "--db", str(db),
         "--start-delay", "0", "--processing-rate", "0", "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert match, f"unexpected first line: {line!r}"
    return process, match[0]


def stop_sandbox_process(process: subprocess.Popen) -> None:
    """SIGTERM, then wait for a clean exit."""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)


class SandboxClient:
    """A requests.Session bound to one sandbox, with the key already set."""

    def __init__(self, server: SandboxServer, api_key: str = API_KEY) -> None:
        self.server = server
        self.session = requests.Session()
        # Never let a proxy from the environment see loopback traffic.
        self.session.trust_env = False
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return self.session.request(method, f"{self.server.url}{path}", **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def create_job(self, job_type: str, data: list[dict[str, Any]], **extra: Any) -> str:
        response = self.post("/v1/jobs", json={"type": job_type, "data": data, **extra})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def close(self) -> None:
        self.session.close()


class Receiver:
    """A webhook endpoint on 127.0.0.1 that fails its first `failures` deliveries."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.deliveries: list[tuple[float, dict[str, Any]]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.arrived:
                    receiver.deliveries.append((time.monotonic(), json.loads(body)))
                    attempt = len(receiver.deliveries)
                    receiver.arrived.notify_all()
                status = 500 if attempt <= receiver.failures else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[float, dict[str, Any]]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.deliveries) >= count, timeout)
            return list(self.deliveries)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
