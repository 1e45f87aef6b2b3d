"""How fast GTMCLI results reach PostgreSQL through Meltano: RECORD against BATCH messages.

Starts `gtmcli-sandbox` (a subprocess, result rows seeded in completed jobs of up to
100,000) and a throwaway PostgreSQL 15 server on loopback, then times
`meltano run --full-refresh tap-gtmcli target-postgres` (RECORD messages) and
`meltano run --full-refresh tap-gtmcli-batch target-postgres` (BATCH files, README "BATCH
mode") with the project's own meltano.yml: target-postgres 0.8.1 with `use_copy: true` and
`load_method: upsert` both ways, each run into an empty schema of its own. Each run's
loaded row count is checked in PostgreSQL.

Figures: rows/s is result rows over the wall time of the whole `meltano run` (Meltano's
start-up included, as a user waits for it); peak RSS is each plugin process's VmHWM,
read from /proc every 0.1 s while it runs. The tap is also timed alone (no Meltano, no
target; stdout to /dev/null, BATCH files to a temporary directory), which shows what the
files cost the tap. Each figure is the median of `--runs` runs.
Writes the "Load benchmark" section of RESULTS.md.

    .venv/bin/python benchmarks/bench_load.py [--rows 500000] [--runs 3] [--quick]

Needs `make install` and the plugins installed (`make demo` or the e2e tests do it), and
PostgreSQL 15's binaries in /usr/lib/postgresql/15/bin (or POSTGRES_BIN).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench_extract import API_KEY, BIN, HERE, commit, machine, start_sandbox
from results_file import write_section

from tap_gtmcli.demo.meltano_project import MeltanoProject

POSTGRES_BIN = Path(os.environ.get("POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
MODES = {"RECORD": "tap-gtmcli", "BATCH": "tap-gtmcli-batch"}
PLUGINS = ("tap-gtmcli", "target-postgres")
GOAL = 2.5


@dataclass
class Measure:
    seconds: float
    tap_rss_mb: float
    target_rss_mb: float


class Postgres:
    """PostgreSQL on 127.0.0.1, trust authentication, deleted when stopped."""

    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])

    @staticmethod
    def _as_postgres(command: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
        subprocess.run(self._as_postgres([str(POSTGRES_BIN / "initdb"), "-D", str(self.data_dir),
                                          "-U", "postgres", "-A", "trust", "--no-sync"]),
                       check=True, capture_output=True)
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data_dir} -c fsync=off"
        subprocess.run(self._as_postgres([str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data_dir),
                                          "-o", options, "-l", str(self.data_dir / "log"),
                                          "-w", "start"]), check=True, capture_output=True)

    def query(self, sql: str) -> str:
        return subprocess.run(
            [str(POSTGRES_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
             "postgres", "-d", "postgres", "-At", "-c", sql],
            capture_output=True, text=True, check=True,
        ).stdout.strip()

    def stop(self) -> None:
        subprocess.run(self._as_postgres([str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data_dir),
                                          "-m", "fast", "-w", "stop"]), check=False,
                       capture_output=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)


class PeakRss:
    """The VmHWM of every process whose command line runs one of `executables`."""

    def __init__(self, executables: tuple[str, ...]) -> None:
        self.executables = executables
        self.peak_kb = dict.fromkeys(executables, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                names = {Path(part.decode(errors="replace")).name for part in command[:2]}
                for executable in self.executables:
                    if executable in names:
                        hwm = next((int(line.split()[1]) for line in status.splitlines()
                                    if line.startswith("VmHWM:")), 0)
                        self.peak_kb[executable] = max(self.peak_kb[executable], hwm)


def compile_bytecode(project: MeltanoProject) -> None:
    """Compile Meltano's and the plugins' modules once, as an ordinary install leaves them.

    With PYTHONDONTWRITEBYTECODE set (this machine sets it) nothing is ever cached, and
    each plugin start compiles every module it imports: seconds of start-up per process
    that would blur the comparison.
    """
    venvs = [project.venv, *(project.root / ".meltano").glob("*/*/venv")]
    for venv in venvs:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                        *map(str, venv.glob("lib/python3*/site-packages"))],
                       check=False, capture_output=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(project.root / "tap_gtmcli")],
                   check=False, capture_output=True)


def measure(project: MeltanoProject, postgres: Postgres, mode: str, run: int, rows: int,
            work: Path) -> Measure:
    schema = f"bench_{mode.lower()}_{run}"
    env = {
        "TARGET_POSTGRES_PORT": str(postgres.port),
        "TARGET_POSTGRES_PASSWORD": "unused-with-trust-auth",
        "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": schema,
        "TAP_GTMCLI_BATCH_BATCH_CONFIG_STORAGE_ROOT": (work / f"batches-{run}").as_uri(),
    }
    with PeakRss(PLUGINS) as rss:
        started = time.perf_counter()
        project.run(["run", "--full-refresh", MODES[mode], "target-postgres"],
                    log_name=f"{mode.lower()}-{run}", env=env)
        seconds = time.perf_counter() - started
    loaded = int(postgres.query(f"select count(*) from {schema}.job_results"))
    if loaded != rows:
        raise SystemExit(f"{mode} run {run} loaded {loaded} rows, expected {rows}")
    postgres.query(f"drop schema {schema} cascade")
    shutil.rmtree(work / f"batches-{run}", ignore_errors=True)
    return Measure(seconds, rss.peak_kb["tap-gtmcli"] / 1024,
                   rss.peak_kb["target-postgres"] / 1024)


def measure_tap_alone(sandbox_url: str, mode: str, work: Path) -> Measure:
    """The tap by itself into /dev/null (BATCH mode: files on disk), for the tap's share."""
    config: dict = {"api_key": API_KEY, "api_url": sandbox_url, "results_per_page": 1000}
    if mode == "BATCH":
        config["batch_config"] = {"encoding": {"format": "jsonl", "compression": "gzip"},
                                  "storage": {"root": (work / "alone").as_uri()},
                                  "batch_size": 50_000}
    config_path = work / "tap-alone.json"
    config_path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    started = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        process = subprocess.Popen([str(BIN / "tap-gtmcli"), "--config", str(config_path)],
                                   stdout=devnull, stderr=devnull, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"tap-gtmcli alone ({mode}) failed")
    shutil.rmtree(work / "alone", ignore_errors=True)
    return Measure(seconds, usage.ru_maxrss / 1024, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20,000 rows, once")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.runs = 20_000, 1
    started = time.perf_counter()
    sandbox = start_sandbox(args.rows, latency_ms=0)
    postgres = Postgres()
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    project = MeltanoProject(log_dir=work / "logs", env={
        "MELTANO_DATABASE_URI": f"sqlite:///{work / 'meltano.db'}",
        "MELTANO_ENVIRONMENT": "dev",
        "TAP_GTMCLI_API_URL": sandbox.url,
        "TAP_GTMCLI_API_KEY": API_KEY,
    })
    results: dict[str, list[Measure]] = {mode: [] for mode in MODES}
    tap_alone: dict[str, list[Measure]] = {mode: [] for mode in MODES}
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        postgres.start()
        project.ensure_meltano()
        project.install(PLUGINS)
        compile_bytecode(project)
        for run in range(1, args.runs + 1):
            for mode in MODES:  # alternated, so that a busy moment hits both modes
                figure = measure(project, postgres, mode, run, args.rows, work)
                results[mode].append(figure)
                print(f"  {mode} run {run}: {figure.seconds:.1f} s, tap {figure.tap_rss_mb:.0f}"
                      f" MB, target {figure.target_rss_mb:.0f} MB", file=sys.stderr)
                alone = measure_tap_alone(sandbox.url, mode, work)
                tap_alone[mode].append(alone)
                print(f"  tap alone, {mode}, run {run}: {alone.seconds:.1f} s, "
                      f"{alone.tap_rss_mb:.0f} MB", file=sys.stderr)
    finally:
        sandbox.stop()
        postgres.stop()
    shutil.rmtree(work, ignore_errors=True)

    lines = ["| mode | rows | seconds | rows/s | tap peak RSS MB | target peak RSS MB | x RECORD |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    rates = {}
    for mode, figures in results.items():
        seconds = statistics.median(f.seconds for f in figures)
        rates[mode] = args.rows / seconds
        lines.append(
            f"| {mode} | {args.rows:,} | {seconds:.1f} | {rates[mode]:,.0f} | "
            f"{statistics.median(f.tap_rss_mb for f in figures):.0f} | "
            f"{statistics.median(f.target_rss_mb for f in figures):.0f} | "
            f"{rates[mode] / rates['RECORD']:.2f} |")
    for mode, figures in tap_alone.items():
        seconds = statistics.median(f.seconds for f in figures)
        lines.append(f"| tap-gtmcli alone, {mode} | {args.rows:,} | {seconds:.1f} | "
                     f"{args.rows / seconds:,.0f} | "
                     f"{statistics.median(f.tap_rss_mb for f in figures):.0f} | - | - |")
    ratio = rates["BATCH"] / rates["RECORD"]
    verdict = f"BATCH {ratio:.2f}x RECORD (goal {GOAL}x): {'met' if ratio >= GOAL else 'NOT met'}"
    text = "\n".join(lines)
    print(text)
    print(verdict)
    if args.quick:
        print("(a --quick run: RESULTS.md left as it is)")
        return
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_section(HERE / "RESULTS.md", "Load benchmark", "\n".join([
        f"- machine: {machine()}", f"- date: {when}", f"- commit: {commit()}",
        f"- command: `benchmarks/bench_load.py --rows {args.rows} --runs {args.runs}`",
        f"- `meltano run --full-refresh <tap> target-postgres` (meltanolabs-target-postgres "
        f"0.8.1, use_copy, upsert) into an empty schema; rows/s over the whole run's wall "
        f"time; peak RSS is VmHWM sampled every 0.1 s; median of {args.runs} run(s), modes "
        f"alternated; took {time.perf_counter() - started:.0f} s", "",
        text, "", f"- {verdict}", "",
    ]))


if __name__ == "__main__":
    main()
