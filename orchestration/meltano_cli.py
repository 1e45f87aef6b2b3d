"""The Dagster resource that runs `meltano run` in the project, as a subprocess.

Meltano and its plugins do not speak Dagster Pipes, so a plain subprocess is the whole
protocol: the exit code decides success, the full output goes to the op's stdout
(Dagster's captured compute logs), and only Meltano's progress and error lines become
Dagster log events. Settings and keys reach Meltano through the worker's environment,
never through run config, which Dagster stores and shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import dagster as dg

from orchestration.project_file import default_project_dir

#: Lines worth a Dagster log event: what was found, loaded and bookmarked.
PROGRESS_LINE = re.compile(
    r"Running job with name|new or changed jobs|Loading \d+ rows into|results done|"
    r"Incremental state has been updated|No state was found"
)
ERROR_LINE = re.compile(r"\[error\s*\]")
#: Error lines kept in the failure's description.
MAX_ERROR_LINES = 20
_LOG_PREFIX = re.compile(r"^\S+Z \[\w+\s*\] ")


def meltano_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment minus its virtualenv, which must not leak into Meltano's."""
    env = dict(environ)
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    return env


# The ignore below: Dagster documents plain subclassing; its type parameter is the value a
# resource yields, which for a plain resource is the resource itself.
class MeltanoCLI(dg.ConfigurableResource):  # type: ignore[type-arg]
    """`meltano` of one project: by default this repository with its `.venv-meltano`."""

    project_dir: str = str(default_project_dir())
    #: Empty: the project's `.venv-meltano/bin/meltano` when present, else `meltano` on PATH.
    meltano_bin: str = ""

    def executable(self) -> str:
        """The `meltano` console script this resource runs."""
        if self.meltano_bin:
            return self.meltano_bin
        local = Path(self.project_dir) / ".venv-meltano" / "bin" / "meltano"
        return str(local) if local.exists() else "meltano"

    def run(self, blocks: Sequence[str], log: dg.DagsterLogManager) -> None:
        """`meltano run BLOCKS`; dg.Failure naming Meltano's error lines if it fails."""
        command = [self.executable(), "run", *blocks]
        errors: list[str] = []
        with subprocess.Popen(
            command, cwd=self.project_dir, env=meltano_environment(os.environ),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stdout.write(line)
                message = _LOG_PREFIX.sub("", line.rstrip())
                if ERROR_LINE.search(line):
                    errors.append(message)
                    log.error(message)
                elif PROGRESS_LINE.search(line):
                    log.info(message)
        sys.stdout.flush()
        if process.returncode != 0:
            shown = "\n".join(errors[:MAX_ERROR_LINES]) or "(no error line; see the op's stdout)"
            raise dg.Failure(
                description=f"`meltano run {' '.join(blocks)}` exited with code "
                f"{process.returncode}:\n{shown}",
                metadata={"exit code": process.returncode},
            )
