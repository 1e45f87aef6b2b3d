"""What the code location reads from `meltano.yml`: jobs, schedules, extractors, settings.

The file is read directly (no `meltano` subprocess), so loading the code location costs
milliseconds and needs no Meltano install; everything Meltano would reject is rejected
here too, with the job or schedule named.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Meltano's interval shorthands, as the cron expressions Dagster schedules take.
INTERVAL_CRONS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
}
_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?]+$")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


class ProjectFileError(ValueError):
    """`meltano.yml` holds something the code location cannot run."""


@dataclass(frozen=True)
class MeltanoJob:
    """A job of `meltano.yml`: its name and its tasks, each the blocks of one `meltano run`."""

    name: str
    tasks: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class MeltanoSchedule:
    """A schedule of `meltano.yml` that runs a job on a cron expression."""

    name: str
    job: str
    cron: str


@dataclass(frozen=True)
class ProjectFile:
    """The parts of one `meltano.yml` the code location uses."""

    raw: Mapping[str, Any]
    jobs: tuple[MeltanoJob, ...]
    schedules: tuple[MeltanoSchedule, ...]
    #: The project's `.env`, which Meltano reads under the process environment.
    dotenv: Mapping[str, str] = field(default_factory=dict)

    def environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        """Variables as Meltano sees them: the process environment over `.env`."""
        return {**self.dotenv, **environ}

    @property
    def extractors(self) -> frozenset[str]:
        """Names of every extractor, inherited ones included."""
        return frozenset(plugin["name"] for plugin in self._plugins("extractors"))

    @property
    def loaders(self) -> frozenset[str]:
        """Names of every loader, inherited ones included."""
        return frozenset(plugin["name"] for plugin in self._plugins("loaders"))

    @property
    def default_environment(self) -> str | None:
        """The environment `meltano` uses when none is named."""
        value = self.raw.get("default_environment")
        return str(value) if value else None

    def extractor_setting(
        self, extractor: str, setting: str, environment: str | None, environ: Mapping[str, str]
    ) -> str | None:
        """A setting's value as Meltano resolves it for the extractor.

        First found wins: the variable `<EXTRACTOR>_<SETTING>`, the active environment's
        config, the plugin's config, then (for an inheriting plugin) the parent's value,
        then the setting's default. `$VAR` references are expanded from `environ`.
        """
        plugins = {plugin["name"]: plugin for plugin in self._plugins("extractors")}
        if extractor not in plugins:
            raise ProjectFileError(f"meltano.yml defines no extractor named {extractor!r}")
        value = self._own_setting(plugins[extractor], setting, environment, environ)
        parent = plugins[extractor].get("inherit_from")
        if value is None and parent:
            return self.extractor_setting(parent, setting, environment, environ)
        if value is None:
            defaults = [entry.get("value") for entry in plugins[extractor].get("settings") or []
                        if entry.get("name") == setting]
            value = defaults[0] if defaults else None
        return None if value is None else _expand(str(value), environ)

    def _own_setting(
        self, plugin: Mapping[str, Any], setting: str, environment: str | None,
        environ: Mapping[str, str],
    ) -> Any:
        variable = f"{plugin['name']}_{setting}".upper().replace("-", "_")
        if variable in environ:
            return environ[variable]
        for scope in (self._environment_plugin(environment, plugin["name"]), plugin):
            config = (scope or {}).get("config") or {}
            if setting in config:
                return config[setting]
        return None

    def _environment_plugin(self, environment: str | None, name: str) -> Mapping[str, Any]:
        for entry in self.raw.get("environments") or []:
            if entry.get("name") == environment:
                plugins = ((entry.get("config") or {}).get("plugins") or {}).get("extractors")
                for plugin in plugins or []:
                    if plugin.get("name") == name:
                        return dict(plugin)
        return {}

    def _plugins(self, plugin_type: str) -> list[Mapping[str, Any]]:
        return list((self.raw.get("plugins") or {}).get(plugin_type) or [])


def _expand(value: str, environ: Mapping[str, str]) -> str:
    # Meltano expands `$VAR` and `${VAR}` in config values; an unset variable is empty.
    return _VARIABLE.sub(lambda match: environ.get(match[1] or match[2], ""), value)


def task_blocks(task: Any, job_name: str) -> tuple[str, ...]:
    """The block names of one task: `"tap target"` or `["tap", "target"]`."""
    if isinstance(task, str):
        parts = task.split()
    elif isinstance(task, list) and all(isinstance(part, str) for part in task):
        parts = [block for part in task for block in part.split()]
    else:
        raise ProjectFileError(f"job {job_name!r}: a task must be a string or a list of "
                               f"strings, not {task!r}")
    if not parts:
        raise ProjectFileError(f"job {job_name!r} has an empty task")
    return tuple(parts)


def schedule_cron(name: str, interval: Any) -> str:
    """The cron expression of a Meltano schedule interval (shorthand or cron)."""
    text = str(interval).strip()
    if text in INTERVAL_CRONS:
        return INTERVAL_CRONS[text]
    fields = text.split()
    if len(fields) == 5 and all(_CRON_FIELD.match(field) for field in fields):
        return text
    raise ProjectFileError(
        f"schedule {name!r}: interval {text!r} is neither a cron expression nor one of "
        f"{', '.join(INTERVAL_CRONS)}"
    )


def load_project_file(root: Path) -> ProjectFile:
    """Read `root/meltano.yml`; ProjectFileError names whatever cannot be run."""
    path = root / "meltano.yml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    jobs = []
    for entry in raw.get("jobs") or []:
        name = entry.get("name")
        tasks = entry.get("tasks")
        if not name or not tasks:
            raise ProjectFileError(f"{path}: every job needs a name and tasks: {entry!r}")
        task_list = tasks if isinstance(tasks, list) else [tasks]
        jobs.append(MeltanoJob(name, tuple(task_blocks(task, name) for task in task_list)))
    job_names = {job.name for job in jobs}
    schedules = []
    for entry in raw.get("schedules") or []:
        name = entry.get("name")
        if entry.get("job") not in job_names:
            raise ProjectFileError(
                f"schedule {name!r} must name one of the jobs {sorted(job_names)}, "
                f"not {entry.get('job')!r} (extractor/loader schedules are not supported)"
            )
        schedules.append(MeltanoSchedule(name, entry["job"],
                                         schedule_cron(name, entry.get("interval"))))
    return ProjectFile(raw, tuple(jobs), tuple(schedules), read_dotenv(root / ".env"))


def read_dotenv(path: Path) -> dict[str, str]:
    """`NAME=value` lines of a `.env` file (comments, blanks and `export ` allowed)."""
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for raw_line in path.read_text(encoding="utf-8").splitlines():
        line = raw_line.strip().removeprefix("export ").strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip()] = value
    return values


#: The variable naming the Meltano project, the one Meltano itself reads.
PROJECT_ROOT_VARIABLE = "MELTANO_PROJECT_ROOT"


def default_project_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """MELTANO_PROJECT_ROOT when set, else the working directory (where Dagster was
    started, as `meltano` itself runs in the project's directory).

    Never the package's own location: installed from a wheel, that is site-packages.
    """
    root = Path(environ.get(PROJECT_ROOT_VARIABLE) or Path.cwd()).resolve()
    if not (root / "meltano.yml").is_file():
        raise ProjectFileError(
            f"no meltano.yml in {root}: start Dagster in the Meltano project's directory, "
            f"or set {PROJECT_ROOT_VARIABLE} to it"
        )
    return root


def environment_name(project: ProjectFile, environ: Mapping[str, str]) -> str | None:
    """The Meltano environment a run uses: MELTANO_ENVIRONMENT, else the project default."""
    return environ.get("MELTANO_ENVIRONMENT") or project.default_environment
