"""The sensor that starts an extraction when GTMCLI jobs have newly finished.

Every INTERVAL_SECONDS (or GTMCLI_SENSOR_INTERVAL_SECONDS), one tick costs at most one
request, `GET /v1/jobs` (first page when the API paginates:
the most recently created jobs), and none while a run of the job is queued or in
progress: that run may have listed the jobs before they finished, so the cursor stays
put and the next tick looks again. The URL and key are resolved as Meltano resolves
the extractor's settings (variables, environment config, meltano.yml, defaults); the
key goes only into the request's header, never into a log, a cursor or a run's tags.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.errors import GTMCLIRetriesExhaustedError
from tap_gtmcli.api.retry import RetryPolicy
from tap_gtmcli.orchestration.finished_jobs import FinishedCursor, newly_finished
from tap_gtmcli.orchestration.project_file import ProjectFile, environment_name

#: Seconds between ticks: results land about this long after a job completes.
INTERVAL_SECONDS = 60
#: Overrides INTERVAL_SECONDS (a whole number of seconds, at least 1).
INTERVAL_VARIABLE = "GTMCLI_SENSOR_INTERVAL_SECONDS"
REQUEST_TIMEOUT_SECONDS = 30.0
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


class SensorSettingError(ValueError):
    """The extractor's settings do not say how to reach GTMCLI."""


def sensor_interval(environ: Mapping[str, str]) -> int:
    """Seconds between ticks: GTMCLI_SENSOR_INTERVAL_SECONDS, else INTERVAL_SECONDS."""
    text = environ.get(INTERVAL_VARIABLE, "").strip()
    if not text:
        return INTERVAL_SECONDS
    if not text.isdigit() or int(text) < 1:
        raise SensorSettingError(f"{INTERVAL_VARIABLE} must be a whole number of seconds, "
                                 f"at least 1, not {text!r}")
    return int(text)


def finished_jobs_sensor(
    job: dg.JobDefinition,
    extractor: str,
    project: ProjectFile,
    interval_seconds: int = INTERVAL_SECONDS,
) -> dg.SensorDefinition:
    """A sensor requesting one run of `job` whenever `extractor`'s account has new
    finished jobs."""

    @dg.sensor(
        name=f"{job.name}_on_finished_gtmcli_jobs",
        job=job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Runs {job.name} when GTMCLI jobs of {extractor}'s account finish "
        "(one GET /v1/jobs per tick).",
    )
    def sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        in_progress = context.instance.get_runs_count(
            dg.RunsFilter(job_name=job.name, statuses=IN_PROGRESS)
        )
        if in_progress:
            return dg.SkipReason(f"a {job.name} run is queued or in progress; "
                                 "looking again next tick")
        try:
            body = _first_page_of_jobs(project, extractor, project.environ(os.environ))
        except GTMCLIRetriesExhaustedError as error:
            # The message names the request and the status, never the key.
            return dg.SkipReason(f"{error}; trying again next tick")
        new_ids, cursor = newly_finished(body.get("jobs") or [], FinishedCursor.decode(
            context.cursor))
        if not new_ids:
            return dg.SensorResult(skip_reason="no GTMCLI job finished since the last look",
                                   cursor=cursor.encode())
        digest = hashlib.sha256(",".join(sorted(new_ids)).encode()).hexdigest()[:16]
        context.log.info(f"{len(new_ids)} GTMCLI job(s) finished; requesting {job.name}")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(
                run_key=f"finished-through-{cursor.moment}-{digest}",
                tags={"gtmcli/newly_finished_jobs": str(len(new_ids))},
            )],
            cursor=cursor.encode(),
        )

    return sensor


def _first_page_of_jobs(
    project: ProjectFile, extractor: str, environ: Mapping[str, str]
) -> dict[str, Any]:
    """One GET /v1/jobs with the extractor's URL and key."""
    environment = environment_name(project, environ)
    api_url = project.extractor_setting(extractor, "api_url", environment, environ)
    api_key = project.extractor_setting(extractor, "api_key", environment, environ)
    variable = f"{extractor}_api_key".upper().replace("-", "_")
    if not api_url or not api_key:
        raise SensorSettingError(
            f"{extractor} has no api_url or api_key in environment {environment!r}: set "
            f"{variable} (and its _API_URL) or its config in meltano.yml"
        )
    # No retries within a tick: the next tick is the retry, and a tick stays one request.
    client = GTMCLIClient(api_url=api_url, api_key=api_key, timeout=REQUEST_TIMEOUT_SECONDS,
                          retry=RetryPolicy(max_retries=0))
    try:
        return client.list_jobs_page(1)
    finally:
        client.close()
