"""The tap's healthy path on loopback: rows per second, this checkout or another.

    python benchmarks/bench_loopback.py                     # this checkout
    python benchmarks/bench_loopback.py --checkout ../old   # another one, same venv

Runs `python -m tap_gtmcli.tap.tap` (output to /dev/null) against an in-process
sandbox holding JOBS x ROWS result rows, RUNS times, alternating between the checkouts
given, and prints each run and the median rows/s. Used to show that checking every
job's rows against its total (issue 21) costs the healthy path nothing measurable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from benchmarks.results_file import write_section  # noqa: E402
from tap_gtmcli.sandbox import SandboxConfig, SandboxServer  # noqa: E402

API_KEY = "bench-loopback-key"


def run_tap(checkout: Path, config: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        subprocess.run([sys.executable, "-m", "tap_gtmcli.tap.tap", "--config", str(config)],
                       stdout=sink, stderr=subprocess.DEVNULL, env=env, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--rows", type=int, default=10_000, help="rows per job")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--checkout", action="append", type=Path, default=[],
                        help="another checkout to measure beside this one (repeatable)")
    arguments = parser.parse_args()
    checkouts = [HERE, *[path.resolve() for path in arguments.checkout]]
    total = arguments.jobs * arguments.rows
    config = SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0)
    with SandboxServer(config) as server, tempfile.TemporaryDirectory() as workdir:
        server.seed_jobs("validate", arguments.rows, jobs=arguments.jobs)
        config_path = Path(workdir) / "config.json"
        config_path.write_text(json.dumps({"api_key": API_KEY, "api_url": server.url}))
        seconds: dict[Path, list[float]] = {checkout: [] for checkout in checkouts}
        for run in range(arguments.runs):
            for checkout in checkouts:
                elapsed = run_tap(checkout, config_path)
                seconds[checkout].append(elapsed)
                print(f"run {run + 1} {checkout.name}: {total / elapsed:,.0f} rows/s")
        lines = []
        for checkout, times in seconds.items():
            median = statistics.median(times)
            commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True, check=False).stdout.strip()
            line = (f"{checkout.name} ({commit or 'not a git checkout'}): {arguments.jobs} jobs x "
                    f"{arguments.rows:,} rows, median "
                    f"{median:.2f} s = {total / median:,.0f} rows/s over {len(times)} runs")
            print(line)
            lines.append(f"- {line}")
        load = os.getloadavg()[0]
        write_section(HERE / "benchmarks" / "RESULTS.md", "Loopback benchmark", "\n".join([
            "`benchmarks/bench_loopback.py`: the tap's healthy path against an in-process "
            f"sandbox, runs alternating between checkouts; load average {load:.2f} at the end.",
            "", *lines]))


if __name__ == "__main__":
    main()
