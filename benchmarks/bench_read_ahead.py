"""How close tap-gtmcli comes to what the API allows, over many jobs and a slow network.

Each cell starts `gtmcli-sandbox` as a subprocess with `--latency-ms` (added to every
answer) and, for the limited cells, `--rate-limit`, seeds completed validate jobs through
`/_sandbox/seed`, then runs each client once per run as its own process (peak RSS from
wait4). Every client's row count is checked against the rows seeded, and the sandbox's
stats give its requests, its 429s and the span from its first request to its last
answer. The tap runs with its defaults only (api_key and api_url). Writes its tables
into their own section of RESULTS.md.

    .venv/bin/python benchmarks/bench_read_ahead.py [--runs 1] [--quick]

Cells:
- no limit (no X-RateLimit-* headers, as GTMCLI's job endpoints may be): 400 one-page
  jobs of 100 rows, latency 100, 300, 800 ms. Bar: tap >= 10x the sequential reader.
- 50 requests per one-second window, latency 100, 300, 800 ms: (a) 400 jobs x 500 rows
  (one page each), (b) 30 jobs x 10,000 rows (ten pages each). Share of budget =
  (requests needed / limit) / time; requests needed = the job list + every page. Bar:
  >= 85%, <= 2% of requests answered 429.
- 120 requests per 60-second window, 150 one-page jobs, latency 300 ms, started just
  after a window opens: the ideal is the second window's opening (the first window
  holds 120 of the 151 requests). Bar: within 1.2x the ideal, <= 2% 429s.

Two times are given: the whole process (interpreter start-up included: on this 2-core
machine shared with other work that alone was 1-3 s), and the API span (first request
to last answer, from the sandbox's stats), which is what pacing and read-ahead decide.
The budget and window bars are judged on the API span; both are printed.

Clients:
- tap-gtmcli, output written to a file, RECORD lines of job_results counted.
- sequential raw client: one requests.Session, job after job, page after page (the
  ceiling of any sequential reader). Its rows/s does not depend on the job count, so in
  the no-limit cells it reads the oldest `--sequential-jobs` jobs only (default 100: 400
  jobs at 800 ms would take five minutes); ratios compare rows/s.
- concurrent raw client: a pool of 32 threads, each with its own requests.Session, one
  job per task (pages in order), honouring Retry-After on 429: the ceiling reference.
- dlt rest_api (dlt==1.31.0 in its own venv, as bench_extract.py installs it): the same
  `jobs` parent and `job_results` child as bench_extract.py, the child with
  `parallelized: True`; the source is iterated in Python and its rows counted.
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


def start_sandbox(jobs: int, rows: int, latency_ms: int, rate_limit: str | None) -> Sandbox:
    command = [str(BIN / "gtmcli-sandbox"), "--port", "0", "--api-key", API_KEY,
               "--start-delay", "0", "--processing-rate", "0", "--latency-ms", str(latency_ms)]
    if rate_limit:
        command += ["--rate-limit", rate_limit]
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
                        f"reader, whole processes ({span_ratio:.1f}x over API spans) (bar 10x):"
                        f" {'met' if ratio >= 10 else 'NOT met'}")
        if dlt:
            ratio = rates["tap-gtmcli"] / dlt
            dlt_run = results["dlt rest_api (parallelized)"][1]
            bars.append(f"no limit, {latency} ms: tap-gtmcli {ratio:.2f}x dlt rest_api "
                        f"parallelized, whole processes ({dlt_run.span / tap_run.span:.2f}x "
                        f"over API spans) (goal 2.5x): {'met' if ratio >= 2.5 else 'NOT met'}")
        bars.append(f"no limit, {latency} ms: tap-gtmcli 429s {share(tap_run)} (bar <= 2%)")
    return lines, bars


def limited_cells(latencies: list[int], shapes: list[tuple[str, int, int]], runs: int,
                  peers: list[str]) -> tuple[list[str], list[str]]:
    limit = 50
    lines = ["| shape | latency | client | requests needed | seconds | API span s | "
             "share of budget (process) | share of budget (API span) | 429s | peak RSS MB | "
             "x dlt |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    bars = []
    for label, jobs, rows in shapes:
        for latency in latencies:
            print(f"50 req/s, {label}, latency {latency} ms", file=sys.stderr)
            sandbox = start_sandbox(jobs, rows, latency, f"{limit}/1s")
            needed = 1 + jobs * math.ceil(rows / PER_PAGE)
            budget = needed / limit
            try:
                results = {name: measure(name, sandbox, jobs * rows, runs)
                           for name in ["tap-gtmcli", *peers]}
            finally:
                sandbox.stop()
            dlt = results.get("dlt rest_api (parallelized)")
            for name, run in results.items():
                x_dlt = f"{dlt.seconds / run.seconds:.2f}" if dlt else "-"
                lines.append(
                    f"| {label} | {latency} ms | {name} | {needed} | {run.seconds:.2f} | "
                    f"{run.span:.2f} | {100 * budget / run.seconds:.0f}% | "
                    f"{100 * budget / run.span:.0f}% | {share(run)} | {run.peak_rss_mb:.0f} | "
                    f"{x_dlt} |")
            tap = results["tap-gtmcli"]
            used = budget / tap.span
            throttled = tap.throttled / max(tap.requests, 1)
            bars.append(
                f"50 req/s, {label}, {latency} ms: tap-gtmcli used {100 * used:.0f}% of the "
                f"budget over its API span ({100 * budget / tap.seconds:.0f}% of the whole "
                f"process), 429s {100 * throttled:.1f}% (bars 85%, <= 2%): "
                f"{'met' if used >= 0.85 and throttled <= 0.02 else 'NOT met'}")
            if dlt and jobs >= 400:
                ratio = dlt.seconds / tap.seconds
                # No client can beat the limit itself: with fixed windows the shortest
                # possible span is one window less than the budget (its first and last
                # windows partly used), plus the tap's own time outside the API span.
                ceiling = dlt.seconds / (max(budget - 1, 0) + tap.seconds - tap.span)
                verdict = "met" if ratio >= 2.5 else "NOT met" + (
                    f" (out of reach: the limit lets no client go faster than "
                    f"{ceiling:.2f}x dlt here)" if ceiling < 2.5 else "")
                bars.append(f"50 req/s, {label}, {latency} ms: tap-gtmcli {ratio:.2f}x dlt "
                            f"rest_api parallelized (goal 2.5x): {verdict}")
    return lines, bars


def per_minute_cell(jobs: int, latency: int) -> tuple[list[str], list[str]]:
    window = 60
    print(f"120 per 60 s, {jobs} one-page jobs, latency {latency} ms", file=sys.stderr)
    sandbox = start_sandbox(jobs, 100, latency, f"120/{window}s")
    try:
        # Start just after a window opens, so that the first window is a whole one.
        time.sleep(window - time.time() % window + 0.2)
        opened = time.time() // window * window
        with tempfile.TemporaryDirectory(dir=WORK) as tmp:
            started = time.time()
            run = run_client("tap-gtmcli", sandbox, Path(tmp), 0)
        stats_first = sandbox.admin("GET", "stats")["first_request_at"]
    finally:
        sandbox.stop()
    if run.rows != jobs * 100:
        raise SystemExit(f"tap-gtmcli got {run.rows} rows, expected {jobs * 100}")
    second_window = opened + window
    ideal_span = second_window - stats_first
    ideal_process = second_window - started
    ratio = run.span / ideal_span
    throttled = run.throttled / max(run.requests, 1)
    lines = ["| client | jobs | requests | seconds | API span s | ideal (second window opens) "
             "s | x ideal (API span) | x ideal (process) | 429s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| tap-gtmcli | {jobs} | {run.requests} | {run.seconds:.2f} | {run.span:.2f} | "
             f"{ideal_span:.2f} | {ratio:.2f} | {run.seconds / ideal_process:.2f} | "
             f"{share(run)} |"]
    bars = [f"120 per 60 s, {jobs} jobs, {latency} ms: tap-gtmcli {ratio:.2f}x the ideal "
            f"({run.seconds / ideal_process:.2f}x for the whole process), 429s "
            f"{100 * throttled:.1f}% (bars 1.2x, <= 2%): "
            f"{'met' if ratio <= 1.2 and throttled <= 0.02 else 'NOT met'}"]
    return lines, bars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="runs per client (median)")
    parser.add_argument("--sequential-jobs", type=int, default=100)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 100 ms only, fewer jobs, no per-minute cell")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    started = time.perf_counter()
    peers = ["concurrent raw client"]
    if (DLT_VENV / "bin" / "python").exists():
        peers.append("dlt rest_api (parallelized)")
    else:
        print(f"  skipping dlt: {DLT_VENV} is not installed", file=sys.stderr)
    latencies = [100] if args.quick else [100, 300, 800]
    jobs = 60 if args.quick else 400
    shapes = [("(a) 400 x 500", 400, 500), ("(b) 30 x 10,000", 30, 10_000)]
    if args.quick:
        shapes = [("(a) 60 x 500", 60, 500), ("(b) 5 x 10,000", 5, 10_000)]
    free, free_bars = no_limit_cells(latencies, jobs, args.runs, args.sequential_jobs,
                                     ["sequential raw client", *peers])
    limited, limited_bars = limited_cells(latencies, shapes, args.runs, peers)
    minute, minute_bars = ([], []) if args.quick else per_minute_cell(150, 300)
    bars = free_bars + limited_bars + minute_bars
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = "\n".join([
        f"- machine: {machine()}", f"- date: {when}", f"- commit: {commit()}",
        f"- command: `benchmarks/bench_read_ahead.py --runs {args.runs} --sequential-jobs "
        f"{args.sequential_jobs}`",
        f"- each figure is the median of {args.runs} run(s); per_page {PER_PAGE}; the "
        f"sequential reader reads the oldest {args.sequential_jobs} jobs only (its rows/s "
        f"does not depend on the job count); took {time.perf_counter() - started:.0f} s",
        "", "## No rate-limit headers", "", *free, "",
        "## 50 requests per one-second window", "", *limited, "",
        *(["## 120 requests per 60-second window", "", *minute, ""] if minute else []),
        "## Bars", "", *[f"- {bar}" for bar in bars], "",
    ])
    print(report)
    if args.quick:
        print("(a --quick run: RESULTS.md left as it is)")
        return
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
