"""The code location: every Meltano job and schedule of `meltano.yml`, and the sensor.

Load it with `dagster dev -m orchestration.definitions` (or validate it with
`dagster definitions validate -m orchestration.definitions`). The project is this
repository unless MELTANO_PROJECT_ROOT names another.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from orchestration.finished_jobs_sensor import finished_jobs_sensor
from orchestration.jobs import dagster_job, dagster_name
from orchestration.meltano_cli import MeltanoCLI
from orchestration.project_file import default_project_dir, load_project_file

#: The job the sensor starts, and the extractor whose account it watches.
SENSOR_JOB = "gtmcli-extract"
SENSOR_EXTRACTOR = "tap-gtmcli"


def build_definitions(project_dir: Path | None = None) -> dg.Definitions:
    """The Definitions of one Meltano project (default: this repository)."""
    root = project_dir or default_project_dir()
    project = load_project_file(root)
    jobs = {job.name: dagster_job(job, project.extractors) for job in project.jobs}
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
        sensors.append(finished_jobs_sensor(jobs[SENSOR_JOB], SENSOR_EXTRACTOR, project))
    return dg.Definitions(
        jobs=list(jobs.values()),
        schedules=schedules,
        sensors=sensors,
        resources={"meltano": MeltanoCLI(project_dir=str(root))},
    )


defs = build_definitions()
