"""`python -m tap_gtmcli.demo`: the whole pipeline on the local sandbox, then a summary.

1. Meltano into `.venv-meltano` and the plugins the demo needs (reused when unchanged).
2. The GTMCLI sandbox in the background; its jobs are kept in `output/gtmcli-sandbox.db`.
3. Submit and collect in one `meltano run gtmcli-validate-and-collect`: sample contacts ->
   mapper-gtmcli (validate) -> GTMCLI jobs (ledger to output/), then tap-gtmcli -> DuckDB,
   which waits for the jobs just submitted and loads them with their results.
4. Enrich: the contacts again, with their GTMCLI results attached, into DuckDB.
5. Extract again: only what is new (the enrich step's own jobs) is loaded.
6. A summary read from the warehouse, then the sandbox stops.

A second run loads only what is new: the contacts file is bookmarked by its mtime and
tap-gtmcli's state lives in Meltano's state backend, here `output/meltano.db`, so that
everything the demo makes is in output/ and `rm -rf output` starts it over.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tap_gtmcli.demo.meltano_project import PROJECT_ROOT, MeltanoProject, MeltanoRun
from tap_gtmcli.demo.sandbox_process import SandboxProcess, SandboxStartError
from tap_gtmcli.demo.steps import StepFailedError, say, step

DEMO_PLUGINS = ("tap-spreadsheets", "mapper-gtmcli", "tap-gtmcli", "target-jsonl",
                "target-duckdb")
OUTPUT = PROJECT_ROOT / "output"
WAREHOUSE = OUTPUT / "warehouse.duckdb"
STATE_DB = OUTPUT / "meltano.db"
SUBMISSION_INDEX = OUTPUT / "submission_index.sqlite"
SANDBOX_PORT = OUTPUT / "sandbox-port"
SUMMARY_SCRIPT = Path(__file__).with_name("warehouse_summary.py")
STEPS = 7


def sandbox_environment(url: str) -> dict[str, str]:
    """Points every GTMCLI plugin at the sandbox (it listens on a free port, not 8765).

    The submission index lives in output/ too, beside the sandbox's jobs it refers to.
    """
    index = str(SUBMISSION_INDEX)
    return {"TAP_GTMCLI_API_URL": url, "MAPPER_GTMCLI_API_URL": url,
            "TARGET_GTMCLI_API_URL": url, "MAPPER_GTMCLI_SUBMISSION_INDEX": index,
            "TARGET_GTMCLI_SUBMISSION_INDEX": index}


def previous_port() -> int:
    """The port of the last run's sandbox when it is free again, else 0 (any free port).

    The submission index is scoped by API URL: the same URL on the next run lets it
    recognise what the sandbox (whose jobs persist in output/) already has.
    """
    try:
        port = int(SANDBOX_PORT.read_text())
    except (OSError, ValueError):
        return 0
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def show(line: str) -> None:
    """A progress line from Meltano's output, indented under its step."""
    say(f"      {line[:150]}")


def report_loaded(run: MeltanoRun) -> None:
    """One line on what a run loaded, table by table."""
    if run.loaded:
        tables = ", ".join(f"{rows} into {table}" for table, rows in sorted(run.loaded.items()))
        say(f"      loaded {tables}")
    else:
        say("      nothing new to load")


def prepare(steps: int) -> tuple[MeltanoProject, SandboxProcess, str]:
    """Steps 1-3 of the demo and of `make orchestrate`: Meltano and the demo's plugins
    installed, the sandbox started (on the last run's port when free); returns the
    project, the sandbox and its URL."""
    # Everything the demo makes lives in output/, Meltano's state too: deleting output/
    # starts the demo over consistently, and the demo never touches .meltano/meltano.db.
    project = MeltanoProject(log_dir=OUTPUT / "logs",
                             env={"MELTANO_DATABASE_URI": f"sqlite:///{STATE_DB}"})
    with step("Install Meltano into .venv-meltano", 1, steps):
        if not project.ensure_meltano():
            say("      already installed")
    with step(f"Install plugins ({', '.join(DEMO_PLUGINS)})", 2, steps):
        project.install(DEMO_PLUGINS)
    sandbox = SandboxProcess(OUTPUT / "gtmcli-sandbox.db", OUTPUT / "logs" / "sandbox.log",
                             port=previous_port())
    with step("Start the GTMCLI sandbox", 3, steps):
        try:
            url = sandbox.start()
        except SandboxStartError:
            if not sandbox.port:
                raise
            sandbox.port = 0  # the last run's port was taken meanwhile
            url = sandbox.start()
        SANDBOX_PORT.write_text(url.rsplit(":", 1)[1])
        say(f"      listening on {url} (jobs kept in {sandbox.db_path.relative_to(PROJECT_ROOT)})")
    return project, sandbox, url


def run_demo() -> None:
    """All steps; raises StepFailedError naming the step that failed."""
    if not (PROJECT_ROOT / "meltano.yml").exists():
        raise StepFailedError("find the project", f"no meltano.yml in {PROJECT_ROOT}; run the "
                              "demo from a clone installed with `pip install -e .`")
    started = time.monotonic()
    project, sandbox, url = prepare(STEPS)
    try:
        env = sandbox_environment(url)
        with step("Submit and collect: meltano run gtmcli-validate-and-collect "
                  "(tap-spreadsheets -> gtmcli-validate -> target-jsonl, then tap-gtmcli -> "
                  "target-duckdb, waiting for the new jobs)", 4, STEPS):
            report_loaded(project.run(["run", "gtmcli-validate-and-collect"],
                                      log_name="validate-and-collect", env=env,
                                      on_progress=show))
        with step("Enrich contacts: meltano run gtmcli-enrich-contacts "
                  "(tap-spreadsheets -> gtmcli-enrich -> target-duckdb)", 5, STEPS):
            report_loaded(project.run(["run", "gtmcli-enrich-contacts"], log_name="enrich",
                                      env=env, on_progress=show))
        with step("Extract, incremental run 2: meltano run gtmcli-extract "
                  "(the enrich step's jobs)", 6, STEPS):
            report_loaded(project.run(["run", "gtmcli-extract"], log_name="extract-2", env=env,
                                      on_progress=show))
        with step("Summary from the warehouse", 7, STEPS):
            summarize(project, sandbox.jobs())
    finally:
        sandbox.stop()
    say(f"\nDemo finished in {time.monotonic() - started:.0f}s. Warehouse: "
        f"{WAREHOUSE.relative_to(PROJECT_ROOT)}; submission ledger and rejects: output/*.jsonl; "
        "logs: output/logs/.\nState: .venv-meltano/bin/meltano state get "
        "--database-uri=sqlite:///output/meltano.db dev:tap-gtmcli-to-target-duckdb")


def summarize(project: MeltanoProject, sandbox_jobs: list[dict[str, Any]]) -> None:
    """Print the warehouse summary with the DuckDB that target-duckdb wrote it with."""
    python = project.plugin_python("loaders", "target-duckdb")
    result = subprocess.run([str(python), str(SUMMARY_SCRIPT), str(WAREHOUSE)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StepFailedError("summary", result.stderr.strip() or "warehouse_summary failed")
    print(result.stdout, end="", flush=True)
    completed = [job for job in sandbox_jobs if job.get("status") == "completed"]
    say(f"\nSandbox truth: {len(sandbox_jobs)} jobs, {len(completed)} completed with "
        f"{sum(int(job.get('total') or 0) for job in completed)} result rows.")


def main() -> int:
    """Run the demo; on failure print which step failed and exit 1."""
    try:
        run_demo()
    except StepFailedError as error:
        error.report("Demo")
        return 1
    except KeyboardInterrupt:
        print("\nDemo interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
