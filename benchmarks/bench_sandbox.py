"""How fast the sandbox serves result rows and seeds jobs.

Starts `gtmcli-sandbox --port 0` as a subprocess, seeds 200,000 validation rows, then
reads every page at per_page=1000 with one plain sequential requests.Session, and
times seeding a 100,000-item job through `/_sandbox/seed`, and one `POST /v1/jobs` of
100,000 items: the answer, then until the job is `completed` (processing rate 0, so the
background computation of its rows is the only wait).

    .venv/bin/python benchmarks/bench_sandbox.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

API_KEY = "bench-key"
PER_PAGE = 1000
JOB_ROWS = 100_000


def sandbox_command() -> list[str]:
    """The installed console script, else the same entry point through -m."""
    script = Path(sys.executable).with_name("gtmcli-sandbox")
    if script.exists():
        return [str(script)]
    found = shutil.which("gtmcli-sandbox")
    return [found] if found else [sys.executable, "-m", "tap_gtmcli.sandbox"]


def start_sandbox() -> tuple[subprocess.Popen[str], str]:
    """Run the sandbox with instant jobs and return it with its base URL."""
    process = subprocess.Popen(
        [*sandbox_command(), "--port", "0", "--api-key", API_KEY,
         "--start-delay", "0", "--processing-rate", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    prefix = "gtmcli-sandbox listening on "
    if not line.startswith(prefix):
        process.kill()
        raise SystemExit(f"unexpected first line from the sandbox: {line!r}")
    return process, line.removeprefix(prefix)


def read_all_rows(session: requests.Session, url: str, job_ids: list[str], parse: bool) -> int:
    """Fetch every result page of the jobs; returns the number of rows received."""
    rows = 0
    for job_id in job_ids:
        page = 1
        while True:
            response = session.get(
                f"{url}/v1/jobs/{job_id}/results", params={"page": page, "per_page": PER_PAGE}
            )
            response.raise_for_status()
            if parse:
                count = len(response.json()["results"])
            else:
                # Count rows without decoding: every row object holds exactly one "status".
                count = response.content.count(b'"status":')
            if count == 0:
                break
            rows += count
            page += 1
    return rows


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="result rows to serve")
    arguments = parser.parse_args()
    process, url = start_sandbox()
    try:
        session = requests.Session()
        session.trust_env = False
        session.headers["Authorization"] = f"Bearer {API_KEY}"

        jobs = max(1, arguments.rows // JOB_ROWS)
        started = time.perf_counter()
        response = session.post(
            f"{url}/_sandbox/seed",
            json={"type": "validate", "count": min(arguments.rows, JOB_ROWS), "jobs": jobs},
        )
        response.raise_for_status()
        seed_seconds = time.perf_counter() - started
        job_ids = response.json()["job_ids"]
        print(f"seeded {jobs} x {min(arguments.rows, JOB_ROWS):,} rows via /_sandbox/seed:"
              f" {seed_seconds:.2f} s ({seed_seconds / jobs:.2f} s per 100,000-item job)")

        items = [{"email": f"person{index}@company{index % 997}.com"} for index in range(JOB_ROWS)]
        # Encoded beforehand: the figure is the sandbox's answer time, not the client's
        # JSON encoding (json.dumps of these 100,000 items alone takes about 0.1 s).
        body = json.dumps({"type": "validate", "data": items}).encode()
        started = time.perf_counter()
        response = session.post(
            f"{url}/v1/jobs", data=body, headers={"Content-Type": "application/json"}
        )
        response.raise_for_status()
        create_seconds = time.perf_counter() - started
        job_id = response.json()["id"]
        print(f"POST /v1/jobs with {JOB_ROWS:,} items ({len(body) / 1e6:.1f} MB) answered in"
              f" {create_seconds:.2f} s (status {response.json()['status']!r})")
        while True:
            status = session.get(f"{url}/v1/jobs/{job_id}").json()["status"]
            if status in ("completed", "failed"):
                break
            time.sleep(0.01)
        done_seconds = time.perf_counter() - started
        print(f"... and was {status!r} {done_seconds:.2f} s after the create was sent"
              f" ({JOB_ROWS / done_seconds:,.0f} rows/s computed)")

        for parse in (False, True):
            started = time.perf_counter()
            rows = read_all_rows(session, url, job_ids, parse)
            seconds = time.perf_counter() - started
            label = "rows served, client parses JSON" if parse else "rows served (raw bytes)"
            print(f"{label}: {rows:,} rows in {seconds:.2f} s = {rows / seconds:,.0f} rows/s"
                  f" at per_page={PER_PAGE}")
        session.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


if __name__ == "__main__":
    main()
