"""Meltano in its own virtualenv, driving this repository's `meltano.yml`.

Meltano and the project's own dependencies conflict, so Meltano lives in `.venv-meltano`
(with `uv`, Meltano's fast venv backend) and each plugin in its own venv under
`.meltano/`. Both are reused while their inputs are unchanged.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tap_gtmcli.demo.steps import StepFailedError

MELTANO_REQUIREMENTS = ("meltano[postgres]==4.4.1", "uv==0.13.9")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Lines of Meltano's output worth showing as progress.
PROGRESS_PATTERN = re.compile(
    r"Submitted \d+ GTMCLI jobs|Rejected \d+ records|new or changed jobs|"
    r"Loading \d+ rows into|results done|No state was found|Incremental state has been updated|"
    r"waiting up to|stopped waiting|wait_for_jobs \(\d+ s\) is up"
)
LOADED_PATTERN = re.compile(r"Loading (\d+) rows into '\"[^\"]+\"\.\"[^\"]+\"\.\"([^\"]+)\"'")
LOG_LINE_PREFIX = re.compile(r"^\S+Z \[\w+\s*\] ")


def base_environment() -> dict[str, str]:
    """The calling environment minus our venv, plus Meltano's quiet defaults."""
    env = dict(os.environ)
    # A venv's activation must not leak into Meltano's or the plugins' interpreters.
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    env["MELTANO_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # uv (Meltano's venv backend here) installs no bytecode unless told to; where
    # PYTHONDONTWRITEBYTECODE is set (as on CI machines) every start of a plugin then
    # compiles all it imports again: a tap's start-up went from 2.4 s to 0.8 s with it.
    env.setdefault("UV_COMPILE_BYTECODE", "1")
    env.setdefault("MELTANO_ENVIRONMENT", "dev")
    return env


@dataclass
class MeltanoRun:
    """What one Meltano command did: its log, and the rows it loaded per table."""

    log_path: Path
    loaded: dict[str, int] = field(default_factory=dict)


@dataclass
class MeltanoProject:
    """This repository as a Meltano project: install Meltano and plugins, run commands."""

    root: Path = PROJECT_ROOT
    log_dir: Path = PROJECT_ROOT / "output" / "logs"
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def venv(self) -> Path:
        """Meltano's own virtualenv."""
        return self.root / ".venv-meltano"

    @property
    def executable(self) -> Path:
        """The `meltano` console script."""
        return self.venv / "bin" / "meltano"

    def plugin_python(self, plugin_type: str, name: str) -> Path:
        """The interpreter of an installed plugin's venv (e.g. to read what it wrote)."""
        return self.root / ".meltano" / plugin_type / name / "venv" / "bin" / "python"

    def ensure_meltano(self) -> bool:
        """Create `.venv-meltano` unless it already holds MELTANO_REQUIREMENTS; True if built."""
        stamp = self.venv / ".requirements"
        wanted = "\n".join((*MELTANO_REQUIREMENTS, "compiled"))
        if self.executable.exists() and stamp.exists() and stamp.read_text() == wanted:
            return False
        self._check([sys.executable, "-m", "venv", "--clear", str(self.venv)], "venv")
        python = str(self.venv / "bin" / "python")
        # uv first (one wheel), then uv installs Meltano's ~60 dependencies in seconds,
        # compiled to bytecode (`meltano --version`: 6.6 s without, 1.8 s with, where
        # PYTHONDONTWRITEBYTECODE is set).
        self._check([python, "-m", "pip", "install", "--quiet", MELTANO_REQUIREMENTS[1]],
                    "pip-uv")
        uv = str(self.venv / "bin" / "uv")
        self._check([uv, "pip", "install", "--quiet", "--compile-bytecode", "--python", python,
                     *MELTANO_REQUIREMENTS], "uv-meltano")
        stamp.write_text(wanted)
        return True

    def install(self, plugins: Sequence[str]) -> MeltanoRun:
        """`meltano install` of the named plugins (a no-op for those already up to date)."""
        return self.run(["install", *plugins], log_name="install")

    def run(
        self,
        arguments: Sequence[str],
        *,
        log_name: str,
        env: Mapping[str, str] | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> MeltanoRun:
        """Run `meltano ARGUMENTS` in the project root; raise StepFailedError on failure."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{log_name}.log"
        command = [str(self.executable), *arguments]
        run = MeltanoRun(log_path)
        full_env = {**base_environment(), **self.env, **(env or {})}
        with log_path.open("w", encoding="utf-8") as log, subprocess.Popen(
            command, cwd=self.root, env=full_env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace",
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                loaded = LOADED_PATTERN.search(line)
                if loaded:
                    table = loaded.group(2)
                    run.loaded[table] = run.loaded.get(table, 0) + int(loaded.group(1))
                if on_progress and PROGRESS_PATTERN.search(line):
                    on_progress(LOG_LINE_PREFIX.sub("", line.rstrip()))
        if process.returncode != 0:
            raise StepFailedError(
                f"meltano {' '.join(arguments)}",
                f"exited with code {process.returncode}",
                log_path,
            )
        return run

    def output(self, arguments: Sequence[str], env: Mapping[str, str] | None = None) -> str:
        """Run `meltano ARGUMENTS` and return its standard output (logs go elsewhere)."""
        result = subprocess.run(
            [str(self.executable), *arguments], cwd=self.root, capture_output=True, text=True,
            env={**base_environment(), **self.env, **(env or {})}, check=False,
        )
        if result.returncode != 0:
            raise StepFailedError(f"meltano {' '.join(arguments)}",
                                  f"exited with code {result.returncode}: {result.stderr[-2000:]}")
        return result.stdout

    def _check(self, command: list[str], log_name: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"meltano-venv-{log_name}.log"
        with log_path.open("w", encoding="utf-8") as log:
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                    env=base_environment(), check=False)
        if result.returncode != 0:
            raise StepFailedError(
                "install Meltano", f"{' '.join(command[:3])} ... exited with code "
                f"{result.returncode}", log_path
            )
