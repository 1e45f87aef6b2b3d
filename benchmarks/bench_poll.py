"""What one check of `wait_for_jobs` costs: the job list against the single-job endpoint.

For accounts of growing size (jobs in the account, all listed by the documented,
unpaginated `GET /v1/jobs`), times both endpoints and weighs their answers, against
`gtmcli-sandbox` as a separate process. Then runs the tap for a wait that cannot end
early (jobs that never start) and prints the requests the sandbox counted beside the
bound `PollSchedule.max_checks` documents.

    .venv/bin/python benchmarks/bench_poll.py [--sizes 10,100,1000,10000] [--wait 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from tap_gtmcli.demo.sandbox_process import SandboxProcess
from tap_gtmcli.tap.job_waiter import PollSchedule

API_KEY = "bench-poll-key"
REPEATS = 15


def timed_get(session: requests.Session, url: str) -> tuple[float, int]:
    """Median seconds and body bytes of REPEATS GETs."""
    seconds, size = [], 0
    for _ in range(REPEATS):
        started = time.perf_counter()
        response = session.get(url, timeout=60)
        response.raise_for_status()
        seconds.append(time.perf_counter() - started)
        size = len(response.content)
    return statistics.median(seconds), size


def endpoint_costs(sizes: list[int], workdir: Path) -> None:
    """List versus single job, for each account size."""
    print("account jobs | GET /v1/jobs ms | bytes      | GET /v1/jobs/{id} ms | bytes | "
          "list costs as much time as N single-job GETs")
    for size in sizes:
        sandbox = SandboxProcess(workdir / f"accounts-{size}.db", workdir / f"sandbox-{size}.log",
                                 api_key=API_KEY, extra_args=("--start-delay", "0",
                                                              "--processing-rate", "0"))
        sandbox.start()
        try:
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {API_KEY}"
            job_ids: list[str] = []
            while len(job_ids) < size:  # the seed route makes at most 1,000 jobs a call
                answer = session.post(f"{sandbox.url}/_sandbox/seed", timeout=600, json={
                    "type": "validate", "count": 1, "jobs": min(1000, size - len(job_ids)),
                })
                answer.raise_for_status()
                job_ids += answer.json()["job_ids"]
            job_id = job_ids[0]
            list_s, list_bytes = timed_get(session, f"{sandbox.url}/v1/jobs")
            one_s, one_bytes = timed_get(session, f"{sandbox.url}/v1/jobs/{job_id}")
            print(f"{size:>12,} | {list_s * 1000:>15.2f} | {list_bytes:>10,} | "
                  f"{one_s * 1000:>20.2f} | {one_bytes:>5,} | {list_s / one_s:.1f}")
        finally:
            sandbox.stop()


def tap_wait_requests(wait: int, first: float, longest: float, workdir: Path) -> None:
    """Requests a whole wait costs the tap, as the sandbox counts them."""
    sandbox = SandboxProcess(workdir / "wait.db", workdir / "sandbox-wait.log", api_key=API_KEY,
                             extra_args=("--start-delay", "86400"))
    sandbox.start()
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {API_KEY}"
        # The second run carries the first run's open job in its state: 1 + 2 open.
        for new_jobs, open_jobs in ((1, 1), (2, 3)):
            session.post(f"{sandbox.url}/_sandbox/reset-stats", timeout=30).raise_for_status()
            for _ in range(new_jobs):
                session.post(f"{sandbox.url}/v1/jobs", timeout=30, json={
                    "type": "validate", "data": [{"email": "someone@example.com"}],
                }).raise_for_status()
            config = workdir / "tap-config.json"
            config.write_text(json.dumps({
                "api_key": API_KEY, "api_url": sandbox.url, "wait_for_jobs": wait,
                "poll_interval": first, "poll_interval_max": longest,
            }))
            state = workdir / "tap-state.json"
            command = [str(Path(sys.executable).with_name("tap-gtmcli")), "--config", str(config)]
            if state.exists():
                command += ["--state", str(state)]
            started = time.monotonic()
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            elapsed = time.monotonic() - started
            states = [json.loads(line)["value"] for line in done.stdout.splitlines()
                      if '"type":"STATE"' in line.replace(" ", "")]
            state.write_text(json.dumps(states[-1]))
            counted = session.get(f"{sandbox.url}/_sandbox/stats", timeout=30).json()["requests"]
            listed = counted.get("GET /v1/jobs", 0)
            by_id = counted.get("GET /v1/jobs/{id}", 0)
            print(f"tap, {open_jobs} open job(s), wait_for_jobs={wait}, poll "
                  f"{first:g}..{longest:g} s: {elapsed:.1f} s, GET /v1/jobs {listed} "
                  f"(1 listing + {listed - 1} checks), "
                  f"GET /v1/jobs/{{id}} {by_id}; checks {listed - 1 + by_id}, documented bound "
                  f"{PollSchedule(first, longest).max_checks(wait)}")
    finally:
        sandbox.stop()


def main() -> None:
    """Run both measurements and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--wait", type=int, default=20)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-poll-") as directory:
        workdir = Path(directory)
        endpoint_costs([int(size) for size in arguments.sizes.split(",")], workdir)
        tap_wait_requests(arguments.wait, 1.0, 5.0, workdir)


if __name__ == "__main__":
    main()
