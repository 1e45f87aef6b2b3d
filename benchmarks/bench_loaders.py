"""Many small jobs into the loaders users already have: one SCHEMA per stream per run.

pipelinewise-target-postgres and target-duckdb flush a stream on every SCHEMA message.
When the tap sent `job_results`' SCHEMA before every job, 200 jobs x 50 rows cost 33 s
and 23 s through them against 9.9 s through target-jsonl (issue 23). Goal: within 1.5x
target-jsonl's time.

Starts `gtmcli-sandbox` (200 completed jobs of 50 rows, half validate, half find) and a
throwaway PostgreSQL 15 on loopback, then times `meltano run --full-refresh tap-gtmcli
LOADER` with the project's own meltano.yml for target-jsonl, pipelinewise-target-postgres
and target-duckdb, alternated, each run into an empty destination of its own. Each run's
rows are counted where they landed, and the SCHEMA messages the tap wrote are counted in
a run of the tap alone. Figures: wall time of the whole `meltano run` (Meltano's start-up
included, as a user waits for it), median of `--runs`. Writes the "Loaders benchmark"
section of RESULTS.md.

    .venv/bin/python benchmarks/bench_loaders.py [--jobs 200] [--rows-per-job 50] [--runs 3]

Needs `make install` and PostgreSQL 15's binaries in /usr/lib/postgresql/15/bin (or
POSTGRES_BIN); installs the three loaders with `meltano install` if they are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from bench_extract import API_KEY, BIN, HERE, commit, machine
from bench_load import Postgres, compile_bytecode
from bench_read_ahead import Sandbox
from bench_read_ahead import start_sandbox as start_read_ahead_sandbox
from results_file import write_section

from tap_gtmcli.demo.meltano_project import MeltanoProject

LOADERS = ("target-jsonl", "pipelinewise-target-postgres", "target-duckdb")
GOAL = 1.5


def start_sandbox(jobs: int, rows_per_job: int) -> Sandbox:
    """bench_read_ahead's sandbox (no latency, no limit): half the jobs validate, half find."""
    sandbox = start_read_ahead_sandbox(jobs // 2, rows_per_job, 0, None)
    sandbox.admin("POST", "seed", {"type": "find", "count": rows_per_job, "jobs": jobs // 2})
    return sandbox


def schema_messages(url: str, work: Path) -> Counter[str]:
    """SCHEMA messages per stream in one run of the tap alone."""
    config = work / "tap.json"
    config.write_text(json.dumps({"api_key": API_KEY, "api_url": url}))
    done = subprocess.run([str(BIN / "tap-gtmcli"), "--config", str(config)],
                          capture_output=True, text=True, check=True)
    messages = (json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))
    return Counter(message["stream"] for message in messages if message["type"] == "SCHEMA")


def loaded_rows(loader: str, project: MeltanoProject, postgres: Postgres, place: str) -> int:
    """Result rows the run left where `loader` writes."""
    if loader == "target-jsonl":
        return sum(1 for _ in (Path(place) / "job_results.jsonl").open(encoding="utf-8"))
    if loader == "pipelinewise-target-postgres":
        return int(postgres.query(f"select count(*) from {place}.job_results"))
    python = project.plugin_python("loaders", "target-duckdb")
    script = ("import duckdb, sys; print(duckdb.connect(sys.argv[1], read_only=True)"
              ".execute('select count(*) from gtmcli.job_results').fetchone()[0])")
    return int(subprocess.run([str(python), "-c", script, place], capture_output=True,
                              text=True, check=True).stdout)


def measure(project: MeltanoProject, postgres: Postgres, loader: str, run: int,
            work: Path) -> tuple[float, int]:
    """Seconds of one `meltano run --full-refresh tap-gtmcli LOADER`, and the rows it left."""
    places = {
        "target-jsonl": str(work / f"jsonl-{run}"),
        "pipelinewise-target-postgres": f"bench_pipelinewise_{run}",
        "target-duckdb": str(work / f"warehouse-{run}.duckdb"),
    }
    env = {
        "TARGET_JSONL_DESTINATION_PATH": places["target-jsonl"],
        "PIPELINEWISE_TARGET_POSTGRES_PORT": str(postgres.port),
        "PIPELINEWISE_TARGET_POSTGRES_PASSWORD": "unused-with-trust-auth",
        "PIPELINEWISE_TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": places[loader]
        if loader == "pipelinewise-target-postgres" else "unused",
        "TARGET_DUCKDB_FILEPATH": places["target-duckdb"],
    }
    Path(places["target-jsonl"]).mkdir(exist_ok=True)
    started = time.perf_counter()
    project.run(["run", "--full-refresh", "tap-gtmcli", loader],
                log_name=f"{loader}-{run}", env=env)
    seconds = time.perf_counter() - started
    return seconds, loaded_rows(loader, project, postgres, places[loader])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rows-per-job", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = args.jobs // 2 * 2 * args.rows_per_job
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-loaders-"))
    sandbox = start_sandbox(args.jobs, args.rows_per_job)
    url = sandbox.url
    postgres = Postgres()
    project = MeltanoProject(log_dir=work / "logs", env={
        "MELTANO_DATABASE_URI": f"sqlite:///{work / 'meltano.db'}",
        "MELTANO_ENVIRONMENT": "dev",
        "TAP_GTMCLI_API_URL": url,
        "TAP_GTMCLI_API_KEY": API_KEY,
    })
    seconds: dict[str, list[float]] = {loader: [] for loader in LOADERS}
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        postgres.start()
        project.ensure_meltano()
        project.install(["tap-gtmcli", *LOADERS])
        compile_bytecode(project)
        schemas = schema_messages(url, work)
        for run in range(1, args.runs + 1):
            for loader in LOADERS:  # alternated, so that a busy moment hits each
                took, loaded = measure(project, postgres, loader, run, work)
                if loaded != rows:
                    raise SystemExit(f"{loader} run {run} left {loaded} rows, expected {rows}")
                seconds[loader].append(took)
                print(f"  {loader} run {run}: {took:.1f} s, {loaded:,} rows", file=sys.stderr)
    finally:
        sandbox.stop()
        postgres.stop()
    shutil.rmtree(work, ignore_errors=True)

    medians = {loader: statistics.median(values) for loader, values in seconds.items()}
    lines = ["| loader | jobs x rows | seconds (median) | runs | x target-jsonl |",
             "|---|---:|---:|---|---:|"]
    for loader in LOADERS:
        lines.append(f"| {loader} | {args.jobs} x {args.rows_per_job} | {medians[loader]:.1f} | "
                     f"{', '.join(f'{value:.1f}' for value in seconds[loader])} | "
                     f"{medians[loader] / medians['target-jsonl']:.2f} |")
    ratio = medians["pipelinewise-target-postgres"] / medians["target-jsonl"]
    verdict = (f"pipelinewise-target-postgres {ratio:.2f}x target-jsonl (goal within {GOAL}x): "
               f"{'met' if ratio <= GOAL else 'NOT met'}; SCHEMA messages per stream in one "
               f"run: {dict(sorted(schemas.items()))}")
    text = "\n".join(lines)
    print(text)
    print(verdict)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_section(HERE / "RESULTS.md", "Loaders benchmark", "\n".join([
        f"- machine: {machine()}", f"- date: {when}", f"- commit: {commit()}",
        f"- command: `benchmarks/bench_loaders.py --jobs {args.jobs} --rows-per-job "
        f"{args.rows_per_job} --runs {args.runs}`",
        "- `meltano run --full-refresh tap-gtmcli <loader>` into an empty destination; wall "
        f"time of the whole run; median of {args.runs} run(s), loaders alternated; took "
        f"{time.perf_counter() - started:.0f} s", "",
        text, "", f"- {verdict}", "",
    ]))


if __name__ == "__main__":
    main()
