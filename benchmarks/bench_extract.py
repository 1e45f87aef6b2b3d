"""How fast GTMCLI results reach a target: tap-gtmcli against a raw client and peers.

Starts `gtmcli-sandbox` as a subprocess, seeds completed validate and find jobs through
`/_sandbox/seed`, then times each client extracting every result row, on loopback and
with 100 ms of latency added to each request. Each figure is the median of `--runs`
runs; ratios are computed from figures of this same invocation. Writes RESULTS.md.

    .venv/bin/python benchmarks/bench_extract.py [--rows 1000000] [--quick]

Clients (each in its own process, peak RSS from wait4):
- raw client: one requests.Session, page after page at per_page=1000, writing the
  same Singer RECORD lines to /dev/null: the ceiling of any sequential client.
- tap-gtmcli to /dev/null, and piped into target-jsonl (own venv under .work/).
- tap-rest-api-msdk (own venv, singer-sdk<0.41): one stream per job, since it has no
  parent-child streams; page-number paging up to `total_pages`.
- dlt's rest_api source (own venv, dlt==1.31.0), run as `bench_extract.py dlt-client URL
  COUNT_FILE` under that venv's python: a `jobs` resource (`v1/jobs`, data_selector
  `jobs`, single_page) and a `job_results` child resource on
  `v1/jobs/{resources.jobs.id}/results` (data_selector `results`, page_number paginator
  from base_page 1 up to `total_pages`, per_page 1000, bearer auth, `include_from_parent:
  ["id"]` so each row carries its job id as tap-gtmcli's rows do). Extraction only: the
  source's `job_results` resource is iterated in Python and its rows counted, with no
  pipeline and no destination. dlt needs no pipeline for that, and `pipeline.extract()`
  would add work tap-gtmcli > /dev/null does not do (normalizing items into a schema and
  writing them to load-package files on disk), so iterating is the fairer and the
  more favourable figure for dlt. The count is written to COUNT_FILE and checked against
  the rows seeded.

"Best peer" in the ratios is whichever peer has the higher rows/s in that condition.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import requests
from results_file import write_section

API_KEY = "bench-key"
PER_PAGE = 1000
JOB_ROWS = 100_000
HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
BIN = Path(sys.executable).parent
TARGET_JSONL_VENV = WORK / "venv-target-jsonl"
MSDK_VENV = WORK / "venv-rest-api-msdk"
DLT_VENV = WORK / "venv-dlt"  # python -m venv; pip install dlt==1.31.0
LATENCY_MS = 100


# --- the raw client (run as `bench_extract.py raw-client URL`) -------------------------


def raw_client(url: str) -> None:
    """The smallest sequential loop: list jobs, read every page, print RECORD lines."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    out = sys.stdout
    jobs = session.get(f"{url}/v1/jobs", timeout=60).json()["jobs"]
    for job in reversed(jobs):
        if job["status"] != "completed":
            continue
        page = 1
        while True:
            body = session.get(
                f"{url}/v1/jobs/{job['id']}/results",
                params={"page": page, "per_page": PER_PAGE}, timeout=60,
            ).json()
            first = (body["page"] - 1) * body["per_page"] + 1
            for offset, row in enumerate(body["results"]):
                row["job_id"] = job["id"]
                row["row_number"] = first + offset
                out.write(json.dumps(
                    {"type": "RECORD", "stream": "job_results", "record": row}) + "\n")
            if page >= body["total_pages"]:
                break
            page += 1
    out.flush()


# --- dlt's rest_api source (run as `bench_extract.py dlt-client URL COUNT_FILE`) -----


def dlt_config(url: str) -> dict:
    """The rest_api config: jobs as parent, each job's result pages as its child."""
    return {
        "client": {"base_url": f"{url}/", "auth": {"type": "bearer", "token": API_KEY}},
        "resources": [
            {"name": "jobs",
             "endpoint": {"path": "v1/jobs", "data_selector": "jobs",
                          "paginator": "single_page"}},
            {"name": "job_results",
             "include_from_parent": ["id"],
             "endpoint": {
                 "path": "v1/jobs/{resources.jobs.id}/results",
                 "data_selector": "results",
                 "params": {"per_page": PER_PAGE},
                 "paginator": {"type": "page_number", "base_page": 1, "page_param": "page",
                               "total_path": "total_pages"},
             }},
        ],
    }


def dlt_client(url: str, count_file: str, *, parallelized: bool = False) -> None:
    """Iterate rest_api's job_results resource (no pipeline, no destination); count rows.

    `parallelized` sets the child resource's own option (bench_read_ahead's fair peer).
    """
    os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    from dlt.sources.rest_api import rest_api_source  # noqa: PLC0415 (only in DLT_VENV)

    config = dlt_config(url)
    if parallelized:
        config["resources"][1]["parallelized"] = True
    source = rest_api_source(config, name="gtmcli")
    count = 0
    for item in source.with_resources("job_results"):
        count += len(item) if isinstance(item, list) else 1
    Path(count_file).write_text(str(count))


# --- the sandbox ----------------------------------------------------------------------


@dataclass
class Sandbox:
    process: subprocess.Popen[str]
    url: str
    job_ids: list[str]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def stats(self) -> dict:
        return requests.get(f"{self.url}/_sandbox/stats", timeout=30,
                            headers={"Authorization": f"Bearer {API_KEY}"}).json()


def start_sandbox(rows: int, latency_ms: int) -> Sandbox:
    """A sandbox holding `rows` result rows in jobs of up to 100,000, half validate."""
    process = subprocess.Popen(
        [str(BIN / "gtmcli-sandbox"), "--port", "0", "--api-key", API_KEY,
         "--start-delay", "0", "--processing-rate", "0", "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip().removeprefix("gtmcli-sandbox listening on ")
    job_ids: list[str] = []
    left, kinds = rows, ["validate", "find"]
    while left > 0:
        count = min(JOB_ROWS, left)
        answer = requests.post(
            f"{url}/_sandbox/seed", timeout=600,
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"type": kinds[len(job_ids) % 2], "count": count, "jobs": 1},
        )
        answer.raise_for_status()
        job_ids += answer.json()["job_ids"]
        left -= count
    return Sandbox(process, url, job_ids)


# --- the clients ----------------------------------------------------------------------


@dataclass
class Measure:
    seconds: float
    peak_rss_mb: float


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_pipeline(commands: list[list[str]], cwd: Path) -> Measure:
    """Run commands piped together (last one to /dev/null); RSS of the first."""
    started = time.perf_counter()
    processes: list[subprocess.Popen[bytes]] = []
    stdin = None
    with open(os.devnull, "wb") as devnull:
        for index, command in enumerate(commands):
            last = index == len(commands) - 1
            process = subprocess.Popen(
                command, stdin=stdin, stdout=devnull if last else subprocess.PIPE,
                stderr=devnull, cwd=cwd, env=clean_env(),
            )
            if stdin is not None:
                stdin.close()
            stdin = process.stdout
            processes.append(process)
        usages = []
        for process in processes:
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                raise SystemExit(f"{commands[processes.index(process)][0]} failed")
            usages.append(usage)
    return Measure(time.perf_counter() - started, usages[0].ru_maxrss / 1024)


def write_json(path: Path, value: dict) -> Path:
    path.write_text(json.dumps(value))
    return path


def tap_config(sandbox: Sandbox, work: Path) -> Path:
    return write_json(work / "tap-gtmcli.json",
                      {"api_key": API_KEY, "api_url": sandbox.url, "results_per_page": PER_PAGE})


def raw_command(sandbox: Sandbox, work: Path) -> list[list[str]]:
    return [[sys.executable, str(Path(__file__).resolve()), "raw-client", sandbox.url]]


def tap_command(sandbox: Sandbox, work: Path) -> list[list[str]]:
    return [[str(BIN / "tap-gtmcli"), "--config", str(tap_config(sandbox, work))]]


def tap_to_jsonl_command(sandbox: Sandbox, work: Path) -> list[list[str]]:
    out = work / "jsonl"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    target = write_json(work / "target-jsonl.json", {"destination_path": str(out)})
    return [*tap_command(sandbox, work),
            [str(TARGET_JSONL_VENV / "bin" / "target-jsonl"), "--config", str(target)]]


def msdk_command(sandbox: Sandbox, work: Path) -> list[list[str]]:
    streams = [
        {"name": f"results_{job_id}", "path": f"/v1/jobs/{job_id}/results",
         "records_path": "$.results[*]", "primary_keys": [], "num_inference_records": 50}
        for job_id in sandbox.job_ids
    ]
    config = {
        "api_url": sandbox.url, "auth_method": "bearer_token", "bearer_token": API_KEY,
        "pagination_request_style": "page_number_paginator",
        "pagination_response_style": "page_number", "pagination_page_size": PER_PAGE,
        "pagination_limit_per_page_param": "per_page",
        "pagination_total_limit_param": "total_pages",
        "next_page_token_path": "$.page", "streams": streams,
    }
    return [[str(MSDK_VENV / "bin" / "tap-rest-api-msdk"),
             "--config", str(write_json(work / "msdk.json", config))]]


def dlt_command(sandbox: Sandbox, work: Path) -> list[list[str]]:
    count = work / "dlt-count"
    count.unlink(missing_ok=True)
    return [[str(DLT_VENV / "bin" / "python"), str(Path(__file__).resolve()), "dlt-client",
             sandbox.url, str(count)]]


CLIENTS: dict[str, tuple[Callable[[Sandbox, Path], list[list[str]]], Path | None]] = {
    "raw client (sequential)": (raw_command, None),
    "tap-gtmcli > /dev/null": (tap_command, None),
    "tap-gtmcli | target-jsonl": (tap_to_jsonl_command, TARGET_JSONL_VENV / "bin" / "target-jsonl"),
    "tap-rest-api-msdk > /dev/null": (msdk_command, MSDK_VENV / "bin" / "tap-rest-api-msdk"),
    "dlt rest_api (iterate)": (dlt_command, DLT_VENV / "bin" / "dlt"),
}
PEERS = ("tap-rest-api-msdk > /dev/null", "dlt rest_api (iterate)")
#: Measured on the full row count: the raw client, the tap and the fast peer.
MAIN = ("raw client (sequential)", "tap-gtmcli > /dev/null", "dlt rest_api (iterate)")
#: Too slow for the full row count (about 1,000 rows/s): measured on `--slow-rows`, with
#: the raw client and the tap measured again beside them so their ratios compare equal work.
SLOW = ("raw client (sequential)", "tap-gtmcli > /dev/null", "tap-gtmcli | target-jsonl",
        "tap-rest-api-msdk > /dev/null")


def measure_condition(
    rows: int, latency_ms: int, runs: int, clients: tuple[str, ...] | None
) -> dict[str, Measure]:
    """Median wall time and RSS of the given (default: all) clients on a fresh sandbox."""
    sandbox = start_sandbox(rows, latency_ms)
    results: dict[str, Measure] = {}
    try:
        with tempfile.TemporaryDirectory(dir=WORK) as tmp:
            work = Path(tmp)
            for name, (command, needs) in CLIENTS.items():
                if clients is not None and name not in clients:
                    continue
                if needs is not None and not needs.exists():
                    print(f"  skipping {name}: {needs} is not installed", file=sys.stderr)
                    continue
                figures = []
                for run in range(runs):
                    figure = run_pipeline(command(sandbox, work), work)
                    print(f"  {name} ({latency_ms} ms) run {run + 1}: {figure.seconds:.2f} s,"
                          f" {figure.peak_rss_mb:.0f} MB", file=sys.stderr)
                    figures.append(figure)
                if name == "tap-gtmcli | target-jsonl":
                    written = sum(
                        sum(1 for _ in path.open()) for path in (work / "jsonl").glob("*.jsonl")
                        if path.name.startswith("job_results"))
                    if written != rows:
                        raise SystemExit(f"target-jsonl got {written} rows, expected {rows}")
                if name == "dlt rest_api (iterate)":
                    got = int((work / "dlt-count").read_text())
                    if got != rows:
                        raise SystemExit(f"dlt rest_api got {got} rows, expected {rows}")
                results[name] = Measure(
                    statistics.median(f.seconds for f in figures),
                    statistics.median(f.peak_rss_mb for f in figures),
                )
    finally:
        sandbox.stop()
    return results


# --- the report -----------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=HERE.parent, check=False).stdout.strip()
    dirty = " (plus uncommitted changes)" if git("status", "--porcelain") else ""
    return (git("rev-parse", "--short", "HEAD") or "unknown") + dirty


def table(conditions: list[tuple[str, int, dict[str, Measure]]]) -> tuple[str, list[str]]:
    lines = ["| condition | client | rows | rows/s | peak RSS MB | x raw | x best peer |",
             "|---|---|---:|---:|---:|---:|---:|"]
    bars: list[str] = []
    for label, rows, results in conditions:
        rates = {name: rows / m.seconds for name, m in results.items()}
        raw = rates.get("raw client (sequential)")
        peer = max((rates[p] for p in PEERS if p in rates), default=None)
        for name, measure in results.items():
            x_raw = f"{rates[name] / raw:.2f}" if raw else "-"
            x_peer = f"{rates[name] / peer:.2f}" if peer else "-"
            cell = name.replace("|", "\\|")  # a pipeline's name, inside a Markdown cell
            lines.append(f"| {label} | {cell} | {rows:,} | {rates[name]:,.0f} | "
                         f"{measure.peak_rss_mb:.0f} | {x_raw} | {x_peer} |")
        tap = rates.get("tap-gtmcli > /dev/null")
        if tap and raw and "slow" not in label:
            need_raw, need_peer = (3.0, 4.0) if "latency" in label else (0.4, 2.0)
            bars.append(f"{label}: tap-gtmcli {tap / raw:.2f}x raw client (bar {need_raw}x): "
                        f"{'met' if tap / raw >= need_raw else 'NOT met'}")
        if tap and peer:
            need_peer = 4.0 if "latency" in label else 2.0
            bars.append(f"{label}: tap-gtmcli {tap / peer:.2f}x best peer (bar {need_peer}x):"
                        f" {'met' if tap / peer >= need_peer else 'NOT met'}")
        tap_rss = results.get("tap-gtmcli > /dev/null")
        if tap_rss and label == "loopback":
            bars.append(f"{label}: tap-gtmcli peak RSS {tap_rss.peak_rss_mb:.0f} MB for "
                        f"{rows:,} rows (bar < 150 MB at 1,000,000)")
    return "\n".join(lines), bars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows on loopback")
    parser.add_argument("--latency-rows", type=int, default=200_000,
                        help="rows under 100 ms latency (sequential clients are slow there)")
    parser.add_argument("--slow-rows", type=int, default=20_000,
                        help="rows for the slow pipelines (target-jsonl, tap-rest-api-msdk), "
                        "measured with the raw client and the tap on a sandbox of their own")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rows, one run")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.latency_rows, args.slow_rows, args.runs = 20_000, 10_000, 5_000, 1
    WORK.mkdir(exist_ok=True)
    started = time.perf_counter()
    conditions = []
    latency_label = f"latency {LATENCY_MS} ms"
    for label, rows, latency, clients in [
        ("loopback", args.rows, 0, MAIN),
        ("loopback, slow pipelines", args.slow_rows, 0, SLOW),
        (latency_label, args.latency_rows, LATENCY_MS, MAIN),
        (f"{latency_label}, slow pipelines", args.slow_rows, LATENCY_MS, SLOW),
    ]:
        print(f"{label}: {rows:,} rows, {args.runs} runs each", file=sys.stderr)
        conditions.append((label, rows, measure_condition(rows, latency, args.runs, clients)))
    text, bars = table(conditions)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = "\n".join([
        f"- machine: {machine()}", f"- date: {when}", f"- commit: {commit()}",
        f"- command: `benchmarks/bench_extract.py --rows {args.rows} --latency-rows "
        f"{args.latency_rows} --slow-rows {args.slow_rows} --runs {args.runs}`",
        f"- each figure is the median of {args.runs} run(s); per_page {PER_PAGE}; the "
        f"latency condition uses {args.latency_rows:,} rows, and the slow pipelines "
        f"(target-jsonl, tap-rest-api-msdk) {args.slow_rows:,} rows on a sandbox of their "
        f"own (raw client and tap measured again there, so each ratio compares equal "
        f"work); 'best peer' is the faster peer measured in the same section; "
        f"took {time.perf_counter() - started:.0f} s", "",
        text, "", *[f"- {bar}" for bar in bars], "",
    ])
    print(text)
    print()
    print("\n".join(bars))
    if args.quick:
        print("(a --quick run: RESULTS.md left as it is)")
    else:
        write_section(HERE / "RESULTS.md", "Extraction benchmark", report)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "raw-client":
        raw_client(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "dlt-client":
        dlt_client(sys.argv[2], sys.argv[3])
    else:
        main()
