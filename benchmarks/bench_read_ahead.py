"""How close tap-gtmcli comes to what the API allows, against every rate limiter the
sandbox can play, over many jobs and a slow network.

Each cell starts `gtmcli-sandbox` as a subprocess with `--latency-ms` (added to every
answer), `--rate-limit`, `--rate-algo` and `--rate-headers`, seeds completed validate jobs
through `/_sandbox/seed`, then runs the tap once as its own process (peak RSS from
wait4). Its row count is checked against the rows seeded; the sandbox's stats give its
requests, its 429s and the API span (first request to last answer). The tap runs with
its defaults only (api_key and api_url).

    .venv/bin/python benchmarks/bench_read_ahead.py [--latencies 100,300,800]
        [--algos grid,lazy,lazy-ceil,sliding,token-bucket] [--only second,minute,free]
        [--peers]

Cells (the limiters: see tap_gtmcli/sandbox/ratelimit.py):
- per second, 50 requests per 1 s, every limiter and latency: (a) 400 jobs x 500 rows
  (one page each), (b) 30 jobs x 10,000 rows (ten pages each). Share of budget =
  (requests needed / 50 per second) / API span; requests needed = the job list + every
  page. Goal: >= 85%, <= 1% of requests answered 429.
- per minute, 120 requests per 60 s, 150 one-page jobs, every limiter and latency; the
  grid cells start just after a calendar minute opens. Ideal (the shortest span any
  client could have): grid, the second minute's opening less the first request; lazy,
  lazy-ceil, sliding, one minute after the first request is counted (a latency after it
  arrives); token bucket, a latency plus the refill of the requests beyond its 120.
  Goal: <= 1.1x the ideal, <= 1% 429s. These cells mostly sleep, so they run side by
  side (one sandbox each); --serial runs them one after another.
- no limit (no X-RateLimit-* headers), 400 one-page jobs of 100 rows: the tap against the
  sequential raw client (and, with --peers, the concurrent raw client and dlt's
  parallelized rest_api). Goal: >= 15x the sequential reader at 300 ms.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import (
    API_KEY,
    BIN,
    DLT_VENV,
    HERE,
    WORK,
    clean_env,
    commit,
    dlt_client,
    machine,
)
from results_file import write_section  # sibling scripts, not a package

PER_PAGE = 1000
READ_AHEAD_TITLE = "Read-ahead benchmark (results pipelined across jobs)"
RAW_THREADS = 32
TAP_RECORD = b'{"type":"RECORD","stream":"job_results"'


# --- the raw clients and dlt (each run as `bench_read_ahead.py CLIENT URL COUNT_FILE`) ---


def _jobs_oldest_first(session: requests.Session, url: str) -> list[dict]:
    jobs = session.get(f"{url}/v1/jobs", timeout=60).json()["jobs"]
    return [job for job in reversed(jobs) if job["status"] == "completed"]


def _get(session: requests.Session, url: str, params: dict) -> dict:
    while True:
        answer = session.get(url, params=params, timeout=60)
        if answer.status_code == 429:
            time.sleep(float(answer.headers.get("Retry-After") or 1))
            continue
        answer.raise_for_status()
        return answer.json()


def _read_job(session: requests.Session, url: str, job: dict, out: Callable[[str], None]) -> int:
    rows, page = 0, 1
    while True:
        body = _get(session, f"{url}/v1/jobs/{job['id']}/results",
                    {"page": page, "per_page": PER_PAGE})
        first = (body["page"] - 1) * body["per_page"] + 1
        lines = []
        for offset, row in enumerate(body["results"]):
            row["job_id"] = job["id"]
            row["row_number"] = first + offset
            lines.append(json.dumps({"type": "RECORD", "stream": "job_results", "record": row}))
        out("\n".join(lines) + "\n")
        rows += len(lines)
        if page >= body["total_pages"]:
            return rows
        page += 1


def sequential_client(url: str, count_file: str, jobs_limit: int) -> None:
    """Job after job, page after page, RECORD lines to stdout."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    jobs = _jobs_oldest_first(session, url)[: jobs_limit or None]
    rows = sum(_read_job(session, url, job, sys.stdout.write) for job in jobs)
    Path(count_file).write_text(str(rows))


def concurrent_client(url: str, count_file: str) -> None:
    """A pool of threads with a session each, one job per task."""
    local = threading.local()
    lock = threading.Lock()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["Authorization"] = f"Bearer {API_KEY}"
        return local.session

    def write(text: str) -> None:
        with lock:
            sys.stdout.write(text)

    jobs = _jobs_oldest_first(session(), url)
    with ThreadPoolExecutor(RAW_THREADS) as pool:
        rows = sum(pool.map(lambda job: _read_job(session(), url, job, write), jobs))
    Path(count_file).write_text(str(rows))


def dlt_parallel_client(url: str, count_file: str) -> None:
    """dlt's rest_api with its child resource `parallelized`; count rows."""
    dlt_client(url, count_file, parallelized=True)


# --- the sandbox --------------------------------------------------------------------------


@dataclass
class Sandbox:
    process: subprocess.Popen[str]
    url: str

    def admin(self, method: str, path: str, body: dict | None = None) -> dict:
        answer = requests.request(method, f"{self.url}/_sandbox/{path}", json=body, timeout=600,
                                  headers={"Authorization": f"Bearer {API_KEY}"})
        answer.raise_for_status()
        return answer.json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start_sandbox(jobs: int, rows: int, latency_ms: int, rate_limit: str | None,
                  algo: str = "grid", headers: str = "all") -> Sandbox:
    command = [str(BIN / "gtmcli-sandbox"), "--port", "0", "--api-key", API_KEY,
               "--start-delay", "0", "--processing-rate", "0", "--latency-ms", str(latency_ms)]
    if rate_limit:
        command += ["--rate-limit", rate_limit, "--rate-algo", algo, "--rate-headers", headers]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    assert process.stdout is not None
    url = process.stdout.readline().strip().removeprefix("gtmcli-sandbox listening on ")
    sandbox = Sandbox(process, url)
    sandbox.admin("POST", "seed", {"type": "validate", "count": rows, "jobs": jobs})
    return sandbox


# --- running the clients ------------------------------------------------------------------


@dataclass
class Run:
    seconds: float  # the whole process
    span: float  # first request to last answer, by the sandbox
    peak_rss_mb: float
    requests: int
    throttled: int
    rows: int


def run_client(name: str, sandbox: Sandbox, work: Path, sequential_jobs: int) -> Run:
    count_file = work / "count"
    count_file.unlink(missing_ok=True)
    output = work / "out.singer"
    me = str(Path(__file__).resolve())
    if name == "tap-gtmcli":
        config = work / "tap.json"
        config.write_text(json.dumps({"api_key": API_KEY, "api_url": sandbox.url}))
        command = [str(BIN / "tap-gtmcli"), "--config", str(config)]
    elif name == "dlt rest_api (parallelized)":
        command = [str(DLT_VENV / "bin" / "python"), me, "dlt", sandbox.url, str(count_file)]
    elif name == "concurrent raw client":
        command = [sys.executable, me, "concurrent", sandbox.url, str(count_file)]
    else:
        command = [sys.executable, me, "sequential", sandbox.url, str(count_file),
                   str(sequential_jobs)]
    sandbox.admin("POST", "reset-stats")
    started = time.perf_counter()
    with output.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL,
                                   cwd=work, env=clean_env())
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed")
    if name == "tap-gtmcli":
        with output.open("rb") as lines:
            rows = sum(1 for line in lines if line.startswith(TAP_RECORD))
    else:
        rows = int(count_file.read_text())
    stats = sandbox.admin("GET", "stats")
    return Run(seconds, stats["last_answer_at"] - stats["first_request_at"],
               usage.ru_maxrss / 1024, sum(stats["requests"].values()),
               stats["rate_limited"], rows)


def measure(name: str, sandbox: Sandbox, expected_rows: int, runs: int,
            sequential_jobs: int = 0) -> Run:
    """The median of `runs` runs; each run's row count must be exact."""
    results = []
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        for number in range(runs):
            run = run_client(name, sandbox, Path(tmp), sequential_jobs)
            print(f"    {name} run {number + 1}: {run.seconds:.2f} s (API span "
                  f"{run.span:.2f} s), {run.requests} requests, {run.throttled} 429s, "
                  f"{run.rows:,} rows, {run.peak_rss_mb:.0f} MB", file=sys.stderr, flush=True)
            if run.rows != expected_rows:
                raise SystemExit(f"{name} got {run.rows} rows, expected {expected_rows}")
            results.append(run)
    middle = sorted(results, key=lambda run: run.seconds)[len(results) // 2]
    return Run(statistics.median(run.seconds for run in results),
               statistics.median(run.span for run in results),
               max(run.peak_rss_mb for run in results), middle.requests,
               middle.throttled, expected_rows)


# --- the cells ----------------------------------------------------------------------------


def share(run: Run) -> str:
    return f"{100 * run.throttled / max(run.requests, 1):.1f}%"


def no_limit_cells(latencies: list[int], jobs: int, runs: int, sequential_jobs: int,
                   peers: list[str]) -> tuple[list[str], list[str]]:
    lines = ["| latency | client | jobs | rows | seconds | API span s | rows/s | 429s | "
             "peak RSS MB | x sequential | x dlt |", "|---|---|---:|---:|---:|---:|---:|---:|"
             "---:|---:|---:|"]
    bars = []
    for latency in latencies:
        print(f"no limit, latency {latency} ms, {jobs} one-page jobs", file=sys.stderr)
        sandbox = start_sandbox(jobs, 100, latency, None)
        try:
            results = {}
            for name in ["tap-gtmcli", *peers]:
                limit = min(sequential_jobs, jobs) if name == "sequential raw client" else jobs
                results[name] = (limit, measure(name, sandbox, limit * 100, runs, limit))
        finally:
            sandbox.stop()
        rates = {name: limit * 100 / run.seconds for name, (limit, run) in results.items()}
        sequential = rates.get("sequential raw client")
        dlt = rates.get("dlt rest_api (parallelized)")
        for name, (limit, run) in results.items():
            x_sequential = f"{rates[name] / sequential:.1f}" if sequential else "-"
            x_dlt = f"{rates[name] / dlt:.2f}" if dlt else "-"
            lines.append(
                f"| {latency} ms | {name} | {limit} | {limit * 100:,} | {run.seconds:.2f} | "
                f"{run.span:.2f} | {rates[name]:,.0f} | {share(run)} | {run.peak_rss_mb:.0f} | "
                f"{x_sequential} | {x_dlt} |")
        tap_run = results["tap-gtmcli"][1]
        if sequential:
            ratio = rates["tap-gtmcli"] / sequential
            limit, sequential_run = results["sequential raw client"]
            span_ratio = (jobs / tap_run.span) / (limit / sequential_run.span)
            bars.append(f"no limit, {latency} ms: tap-gtmcli {ratio:.1f}x the sequential "
                        f"reader, whole processes ({span_ratio:.1f}x over API spans) (goal 15x):"
                        f" {'met' if ratio >= 15 else 'NOT met'}")
        if dlt:
            ratio = rates["tap-gtmcli"] / dlt
            dlt_run = results["dlt rest_api (parallelized)"][1]
            bars.append(f"no limit, {latency} ms: tap-gtmcli {ratio:.2f}x dlt rest_api "
                        f"parallelized, whole processes ({dlt_run.span / tap_run.span:.2f}x "
                        f"over API spans) (goal 2.5x): {'met' if ratio >= 2.5 else 'NOT met'}")
        bars.append(f"no limit, {latency} ms: tap-gtmcli 429s {share(tap_run)} (bar <= 2%)")
    return lines, bars


ALGOS = ["grid", "lazy", "lazy-ceil", "sliding", "token-bucket"]


def per_second_cells(latencies: list[int], algos: list[str],
                     shapes: list[tuple[str, int, int]]) -> tuple[list[str], list[str]]:
    limit = 50
    lines = ["| shape | limiter | latency | requests needed | seconds | API span s | "
             "share of budget (API span) | share (process) | 429s | peak RSS MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    bars = []
    for label, jobs, rows in shapes:
        for algo in algos:
            for latency in latencies:
                print(f"50 per 1 s, {label}, {algo}, {latency} ms", file=sys.stderr)
                sandbox = start_sandbox(jobs, rows, latency, f"{limit}/1s", algo)
                needed = 1 + jobs * math.ceil(rows / PER_PAGE)
                budget = needed / limit
                try:
                    run = measure("tap-gtmcli", sandbox, jobs * rows, 1)
                finally:
                    sandbox.stop()
                used = budget / run.span
                throttled = run.throttled / max(run.requests, 1)
                lines.append(
                    f"| {label} | {algo} | {latency} ms | {needed} | {run.seconds:.2f} | "
                    f"{run.span:.2f} | {100 * used:.0f}% | {100 * budget / run.seconds:.0f}% | "
                    f"{share(run)} ({run.throttled}) | {run.peak_rss_mb:.0f} |")
                met = used >= 0.85 and throttled <= 0.01
                bars.append(f"50 per 1 s, {label}, {algo}, {latency} ms: {100 * used:.0f}% of "
                            f"the budget, {100 * throttled:.1f}% 429s (goals 85%, <= 1%): "
                            f"{'met' if met else 'NOT met'}")
    return lines, bars


def per_minute_run(algo: str, latency: int, jobs: int) -> tuple[str, Run, float]:
    window, limit = 60, 120
    sandbox = start_sandbox(jobs, 100, latency, f"{limit}/{window}s", algo)
    try:
        if algo == "grid":  # start just after a minute opens: the first window is whole
            time.sleep(window - time.time() % window + 0.2)
        opened = time.time() // window * window
        with tempfile.TemporaryDirectory(dir=WORK) as tmp:
            run = run_client("tap-gtmcli", sandbox, Path(tmp), 0)
        first = sandbox.admin("GET", "stats")["first_request_at"]
    finally:
        sandbox.stop()
    if run.rows != jobs * 100:
        raise SystemExit(f"tap-gtmcli got {run.rows} rows, expected {jobs * 100}")
    needed = jobs + 1
    if algo == "grid":
        ideal = opened + window - first
    elif algo == "token-bucket":
        ideal = latency / 1000 + (needed - limit) * window / limit
    else:
        ideal = latency / 1000 + window
    return algo, run, ideal


def per_minute_cells(latencies: list[int], algos: list[str], jobs: int,
                     serial: bool) -> tuple[list[str], list[str]]:
    cells = [(algo, latency) for algo in algos for latency in latencies]
    print(f"120 per 60 s, {jobs} one-page jobs: {len(cells)} cells", file=sys.stderr)
    with ThreadPoolExecutor(1 if serial else len(cells)) as pool:
        results = list(pool.map(lambda cell: per_minute_run(cell[0], cell[1], jobs), cells))
    lines = ["| limiter | latency | requests | seconds | API span s | ideal s | x ideal | "
             "429s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    bars = []
    for (algo, latency), (_, run, ideal) in zip(cells, results, strict=True):
        ratio = run.span / ideal
        throttled = run.throttled / max(run.requests, 1)
        lines.append(f"| {algo} | {latency} ms | {run.requests} | {run.seconds:.2f} | "
                     f"{run.span:.2f} | {ideal:.2f} | {ratio:.2f} | {share(run)} "
                     f"({run.throttled}) |")
        bars.append(f"120 per 60 s, {algo}, {latency} ms: {ratio:.2f}x the ideal, "
                    f"{100 * throttled:.1f}% 429s (goals 1.1x, <= 1%): "
                    f"{'met' if ratio <= 1.1 and throttled <= 0.01 else 'NOT met'}")
    return lines, bars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latencies", default="100,300,800",
                        help="milliseconds, comma-separated")
    parser.add_argument("--algos", default=",".join(ALGOS), help="limiters, comma-separated")
    parser.add_argument("--only", default="second,minute,free",
                        help="cells to run: second, minute, free (comma-separated)")
    parser.add_argument("--peers", action="store_true",
                        help="no-limit cells: the concurrent raw client and dlt too")
    parser.add_argument("--sequential-jobs", type=int, default=100)
    parser.add_argument("--serial", action="store_true",
                        help="run the per-minute cells one after another")
    args = parser.parse_args()
    latencies = [int(value) for value in args.latencies.split(",")]
    algos = args.algos.split(",")
    only = set(args.only.split(","))
    WORK.mkdir(exist_ok=True)
    started = time.perf_counter()
    peers = ["sequential raw client"]
    if args.peers:
        peers.append("concurrent raw client")
        if (DLT_VENV / "bin" / "python").exists():
            peers.append("dlt rest_api (parallelized)")
    shapes = [("(a) 400 x 500", 400, 500), ("(b) 30 x 10,000", 30, 10_000)]
    sections: list[str] = []
    bars: list[str] = []
    if "second" in only:
        lines, more = per_second_cells(latencies, algos, shapes)
        sections += ["## 50 requests per second, every limiter", "", *lines, ""]
        bars += more
    if "minute" in only:
        lines, more = per_minute_cells(latencies, algos, 150, args.serial)
        sections += ["## 120 requests per minute, every limiter", "", *lines, ""]
        bars += more
    if "free" in only:
        lines, more = no_limit_cells(latencies, 400, 1, args.sequential_jobs, peers)
        sections += ["## No rate-limit headers", "", *lines, ""]
        bars += more
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = "\n".join([
        f"- machine: {machine()}", f"- date: {when}", f"- commit: {commit()}",
        f"- command: `benchmarks/bench_read_ahead.py {' '.join(sys.argv[1:])}`",
        f"- one run per cell; per_page {PER_PAGE}; took {time.perf_counter() - started:.0f} s",
        "", *sections, "## Goals", "", *[f"- {bar}" for bar in bars], "",
    ])
    print(report)
    if only == {"second", "minute", "free"} and len(algos) == len(ALGOS):
        write_section(HERE / "RESULTS.md", READ_AHEAD_TITLE, report)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "concurrent":
        concurrent_client(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "sequential":
        sequential_client(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) == 4 and sys.argv[1] == "dlt":
        dlt_parallel_client(sys.argv[2], sys.argv[3])
    else:
        main()
