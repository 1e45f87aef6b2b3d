"""The code location: every Meltano job and schedule of `meltano.yml`, and the sensor.

Load it with `dagster dev -m tap_gtmcli.orchestration.definitions` (or validate it with
`dagster definitions validate -m tap_gtmcli.orchestration.definitions`). The project is
the one MELTANO_PROJECT_ROOT names, else the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from tap_gtmcli.orchestration.finished_jobs_sensor import finished_jobs_sensor, sensor_interval
from tap_gtmcli.orchestration.jobs import dagster_job, dagster_name
from tap_gtmcli.orchestration.meltano_cli import MeltanoCLI
from tap_gtmcli.orchestration.project_file import (
    default_project_dir,
    environment_name,
    load_project_file,
)

#: The job the sensor starts, and the extractor whose account it watches.
SENSOR_JOB = "gtmcli-extract"
SENSOR_EXTRACTOR = "tap-gtmcli"
#: Meltano appends this variable's value to every state id of a `meltano run`.
STATE_ID_SUFFIX_VARIABLE = "MELTANO_RUN_STATE_ID_SUFFIX"


def build_definitions(project_dir: Path | None = None, meltano_bin: str = "") -> dg.Definitions:
    """The Definitions of one Meltano project (default: `default_project_dir()`), run with
    `meltano_bin` (default: the project's `.venv-meltano`, else `meltano` on PATH)."""
    root = project_dir or default_project_dir()
    project = load_project_file(root)
    # State ids as the workers' `meltano run` will name them (the run queue's key).
    environment = environment_name(project, os.environ)
    suffix = os.environ.get(STATE_ID_SUFFIX_VARIABLE)
    meltano = MeltanoCLI(project_dir=str(root), meltano_bin=meltano_bin)
    jobs = {job.name: dagster_job(job, meltano, project.extractors, loaders=project.loaders,
                                  environment=environment, suffix=suffix)
            for job in project.jobs}
    schedules = [
        dg.ScheduleDefinition(
            name=dagster_name(schedule.name),
            job=jobs[schedule.job],
            cron_schedule=schedule.cron,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Meltano schedule `{schedule.name}`",
        )
        for schedule in project.schedules
    ]
    sensors = []
    if SENSOR_JOB in jobs and SENSOR_EXTRACTOR in project.extractors:
        sensors.append(finished_jobs_sensor(jobs[SENSOR_JOB], SENSOR_EXTRACTOR, project,
                                            sensor_interval(os.environ)))
    return dg.Definitions(
        jobs=list(jobs.values()),
        schedules=schedules,
        sensors=sensors,
    )


defs = build_definitions()
