"""The Meltano runner: the project's Meltano, wired to a sandbox, run as a user runs it."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.demo.meltano_project import MeltanoProject, MeltanoRun
from tap_gtmcli.demo.sandbox_process import SandboxProcess
from tap_gtmcli.demo.steps import StepFailedError

#: Every plugin the end-to-end tests run.
E2E_PLUGINS = ("tap-spreadsheets", "mapper-gtmcli", "tap-gtmcli", "target-gtmcli",
               "target-jsonl", "target-duckdb", "target-postgres",
               "pipelinewise-target-postgres")
#: The environment prefixes of the project's own plugins.
GTMCLI_PLUGIN_ENV = ("TAP_GTMCLI", "MAPPER_GTMCLI", "TARGET_GTMCLI")
JOB_SETTLE_SECONDS = 120.0
#: A state that grows with the number of jobs or rows would show up far above this.
MAX_STATE_BYTES = 4096
#: What tap-gtmcli logs when a run finds no new or changed job.
NOTHING_NEW = "0 new or changed jobs to emit"
#: What Meltano writes of its own under the project, whichever test runs it: `meltano
#: elt` logs, and under `.meltano/run` the plugins' logging files and the config files
#: each run writes its plugin (with the key; Meltano deletes them when the run ends).
MELTANO_OWN_FILES = tuple(Path(__file__).resolve().parents[2] / ".meltano" / name
                          for name in ("logs", "run"))


@dataclass
class Pipelines:
    """The Meltano project wired to this session's sandbox and temporary directory."""

    project: MeltanoProject
    sandbox: SandboxProcess
    workdir: Path

    def run(self, *arguments: str, log_name: str, env: dict[str, str] | None = None,
            on_progress: Callable[[str], None] | None = None) -> MeltanoRun:
        """`meltano run ...` against the sandbox; a failure shows the end of its log.

        `on_progress` gets each progress line (PROGRESS_PATTERN) the moment Meltano
        prints it; the log file itself is written in blocks.
        """
        try:
            return self.project.run(["run", *arguments], log_name=log_name, env=env,
                                    on_progress=on_progress)
        except StepFailedError as error:
            log = error.log_path.read_text() if error.log_path else ""
            errors = [line for line in log.splitlines() if "[error" in line][:20]
            pytest.fail("\n".join([str(error), *errors, error.log_tail()]))

    def state(self, state_id: str) -> dict[str, Any]:
        """`meltano state get STATE_ID`, parsed."""
        return json.loads(self.project.output(["state", "get", state_id]))

    def sandbox_truth(self) -> tuple[dict[str, dict[str, Any]], int]:
        """Once every job is settled: the jobs by id, and the result rows they hold."""
        jobs = self.sandbox.wait_until_jobs_settle(JOB_SETTLE_SECONDS)
        rows = sum(int(job["total"]) for job in jobs if job["status"] == "completed")
        return {job["id"]: job for job in jobs}, rows


def submit_more(pipelines: Pipelines, log_name: str) -> None:
    """A find job on top of the validate job, so the second extract has something new.

    Several tests call this on the session's sandbox: the submission index would skip the
    items an earlier call sent, and there would be no new job.
    """
    pipelines.run("--full-refresh", "tap-spreadsheets", "gtmcli-find", "target-jsonl",
                  log_name=log_name, env={"MAPPER_GTMCLI_RESUBMIT_AFTER_DAYS": "0"})


def assert_small_state(pipelines: Pipelines, state_id: str) -> None:
    """The tap's state stays small: no open jobs once all settled, nothing per job."""
    state = pipelines.state(state_id)
    assert len(json.dumps(state)) < MAX_STATE_BYTES, state
    bookmarks = state["singer_state"]["bookmarks"]
    assert bookmarks["jobs"]["open_jobs"] == {}
    assert bookmarks["jobs"]["replication_key"] == "created_at"
    assert not bookmarks.get("job_results", {}).get("partitions")


@contextmanager
def installing(project: MeltanoProject) -> Iterator[None]:
    """Held while Meltano and the plugins are checked and installed: the pytest-xdist
    workers share the project's `.venv-meltano/` and `.meltano/`, and the first one to
    get here builds them while the others wait (an exclusive flock on the project root)."""
    handle = os.open(project.root, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock
