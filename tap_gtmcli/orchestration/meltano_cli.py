"""The Dagster resource that runs `meltano run` in the project, as a subprocess.

Meltano and its plugins do not speak Dagster Pipes, so a plain subprocess is the whole
protocol: the exit code decides success, Meltano's progress and error lines become
Dagster log events, and every other line goes to the op's stdout (Dagster's captured
compute logs), so each line shows once. Settings and keys reach Meltano through the
worker's environment, never through run config, which Dagster stores and shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

#: Lines worth a Dagster log event: what was found, loaded and bookmarked.
PROGRESS_LINE = re.compile(
    r"Running job with name|new or changed jobs|Loading \d+ rows into|results done|"
    r"Incremental state has been updated|No state was found"
)
ERROR_LINE = re.compile(r"\[error\s*\]")
#: Meltano's run guard refusing a pipeline whose state id has a run in flight elsewhere.
REFUSED_LINE = re.compile(
    r"Another '[^']+' pipeline is already running(?: which started at [\d\-: .+]+\d)?")
#: Error lines kept in the failure's description.
MAX_ERROR_LINES = 20
_LOG_PREFIX = re.compile(r"^\S+Z \[\w+\s*\] ")


def meltano_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment minus its virtualenv, which must not leak into Meltano's."""
    env = dict(environ)
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    return env


@dataclass(frozen=True)
class RunOutcome:
    """How one `meltano run` ended: it ran, or Meltano's guard refused it (`skipped`)."""

    skipped: str | None = None


# The ignore below: Dagster documents plain subclassing; its type parameter is the value a
# resource yields, which for a plain resource is the resource itself.
class MeltanoCLI(dg.ConfigurableResource):  # type: ignore[type-arg]
    """`meltano` of one project (the code location passes its directory)."""

    project_dir: str
    #: Empty: the project's `.venv-meltano/bin/meltano` when present, else `meltano` on PATH.
    meltano_bin: str = ""

    def executable(self) -> str:
        """The `meltano` console script this resource runs."""
        if self.meltano_bin:
            return self.meltano_bin
        local = Path(self.project_dir) / ".venv-meltano" / "bin" / "meltano"
        return str(local) if local.exists() else "meltano"

    def run(self, blocks: Sequence[str], log: dg.DagsterLogManager) -> RunOutcome:
        """`meltano run BLOCKS`.

        A refusal by Meltano's run guard (another worker holds the state id) is an outcome,
        `skipped` with Meltano's reason: nothing ran, nothing is lost, the run in flight
        saves the state. Any other non-zero exit raises dg.Failure naming the error lines.
        """
        command = [self.executable(), "run", *blocks]
        errors: list[str] = []
        refused: str | None = None
        with subprocess.Popen(
            command, cwd=self.project_dir, env=meltano_environment(os.environ),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                message = _LOG_PREFIX.sub("", line.rstrip())
                refusal = REFUSED_LINE.search(line)
                if refusal:
                    refused = refused or refusal[0]
                    log.warning(message)
                elif ERROR_LINE.search(line):
                    errors.append(message)
                    # After a refusal, Meltano's closing error lines explain it: no alarm.
                    (log.warning if refused else log.error)(message)
                elif PROGRESS_LINE.search(line):
                    log.info(message)
                else:
                    sys.stdout.write(line)
        sys.stdout.flush()
        if process.returncode != 0 and refused:
            return RunOutcome(skipped=refused)
        if process.returncode != 0:
            shown = "\n".join(errors[:MAX_ERROR_LINES]) or "(no error line; see the op's stdout)"
            raise dg.Failure(
                description=f"`meltano run {' '.join(blocks)}` exited with code "
                f"{process.returncode}:\n{shown}",
                metadata={"exit code": process.returncode},
            )
        return RunOutcome()
