"""Dagster as users run it: `dagster dev` (web UI and daemon) with the committed
`dagster.yaml`, driven through the UI's GraphQL API.

One `dagster dev` on a free 127.0.0.1 port, its DAGSTER_HOME a temporary copy of
tap_gtmcli/orchestration/dagster.yaml, against an in-process sandbox, the session's
PostgreSQL (Meltano's system database) and a DuckDB warehouse of its own. Its runs use
the state id suffix `ui`, so no other test's state or warehouse is involved.

In order: the code location as the UI reads it, whose schedules the fixture then stops
(a cron tick would start a run of the job under test); two overlapping `gtmcli_extract` runs
launched through GraphQL (the second waits QUEUED while the first runs, then succeeds
and loads nothing twice; the warehouse holds exactly the sandbox's rows); the sensor's
ticks skipping while those runs are queued or in progress, then starting a run for the
jobs that finished meanwhile.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests

from tap_gtmcli.demo.meltano_project import PROJECT_ROOT, MeltanoProject
from tap_gtmcli.sandbox import SandboxServer
from tests.helpers import key_scan
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.orchestration import (
    DAGSTER,
    child_environment,
    jobs_bookmark,
    jobs_by_id,
    meltano_runs,
    settled_jobs_bookmark,
    stored_state,
    wait_for,
)
from tests.helpers.postgres import PostgresServer
from tests.helpers.postgres import free_port as _free_port
from tests.helpers.sandboxes import fast_sandbox
from tests.helpers.warehouse import assert_warehouse_holds_exactly

pytestmark = pytest.mark.e2e

INSTANCE_FILE = PROJECT_ROOT / "tap_gtmcli" / "orchestration" / "dagster.yaml"
LOCATION = "tap_gtmcli.orchestration.definitions"
REPOSITORY = "__repository__"
JOB = "gtmcli_extract"
SENSOR = "gtmcli_extract_on_finished_gtmcli_jobs"
STATE_ID = "dev:tap-gtmcli-to-target-duckdb:ui"
STARTUP_SECONDS = 180
RUN_SECONDS = 240
STOP_SECONDS = 10
#: The hourly schedule fires at minute 0 while it runs (until the fixture stops it, in
#: the UI's first seconds): `dagster dev` is not started this close before the hour.
CLEAR_OF_THE_HOUR_SECONDS = 90
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

REPOSITORY_QUERY = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    name location { name }
    jobs { name tags { key value } }
    schedules { id name pipelineName cronSchedule executionTimezone
                scheduleState { status } }
    sensors { id name minIntervalSeconds targets { pipelineName }
              sensorState { id status } }
} } } }
"""
LAUNCH_MUTATION = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
} }
"""
RUN_QUERY = """
query Run($id: ID!) { runOrError(runId: $id) { ... on Run {
    runId status startTime endTime tags { key value }
} } }
"""
RUNS_QUERY = """
query Runs($job: String!) { runsOrError(filter: {pipelineName: $job}) { ... on Runs {
    results { runId status startTime endTime tags { key value } }
} } }
"""
STOP_SCHEDULE_MUTATION = """
mutation Stop($id: String!) { stopRunningSchedule(id: $id) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
} }
"""
TICKS_QUERY = """
query Ticks($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { status ticks(limit: 100) {
        id status timestamp skipReason runIds cursor } } }
} }
"""


@dataclass
class DagsterUI:
    """A running `dagster dev`: its GraphQL endpoint, home and log."""

    url: str
    home: Path
    log: Path
    session: requests.Session
    #: Seconds from `dagster dev` starting to the UI serving the code location.
    startup_seconds: float = 0.0
    #: The code location as the UI first served it, before the schedules were stopped.
    repository: dict[str, Any] = field(default_factory=dict)

    def query(self, query: str, **variables: Any) -> dict[str, Any]:
        response = self.session.post(f"{self.url}/graphql", timeout=30,
                                     json={"query": query, "variables": variables})
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return dict(body["data"])

    def launch(self, job: str) -> str:
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY,
                    "jobName": job}
        launched = self.query(LAUNCH_MUTATION, params={"selector": selector,
                                                       "runConfigData": {}})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return str(launched["run"]["runId"])

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.query(RUN_QUERY, id=run_id)["runOrError"])

    def runs(self, job: str) -> list[dict[str, Any]]:
        return list(self.query(RUNS_QUERY, job=job)["runsOrError"]["results"])

    def stop_schedules(self) -> None:
        """Stops every schedule, as the UI's schedule toggle does."""
        for schedule in self.repository["schedules"]:
            stopped = self.query(STOP_SCHEDULE_MUTATION, id=schedule["id"])
            assert stopped["stopRunningSchedule"]["scheduleState"]["status"] == "STOPPED", stopped

    def sensor_selector(self) -> dict[str, str]:
        return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY,
                "sensorName": SENSOR}

    def ticks(self) -> list[dict[str, Any]]:
        """The sensor's ticks, oldest first."""
        state = self.query(TICKS_QUERY, selector=self.sensor_selector())["sensorOrError"]
        return sorted(state["sensorState"]["ticks"], key=lambda tick: tick["timestamp"])


def wait_clear_of_the_hour(seconds: float) -> None:
    """Returns at once unless the next full hour (UTC) is less than `seconds` away; then
    returns just after it."""
    to_the_hour = 3600 - time.time() % 3600
    if to_the_hour < seconds:
        time.sleep(to_the_hour + 1)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    """The account's sandbox, empty until the test seeds it; jobs finish at once."""
    with fast_sandbox() as server:
        yield server


@pytest.fixture(scope="module")
def dagster_ui(
    meltano_project: MeltanoProject, worker_environment: dict[str, str],
    orchestration_dir: Path, sandbox: SandboxServer,
) -> Iterator[DagsterUI]:
    """`dagster dev` as `make orchestrate` starts it, on a free loopback port."""
    home = orchestration_dir / "dagster-ui-home"
    home.mkdir()
    shutil.copyfile(INSTANCE_FILE, home / "dagster.yaml")
    log = orchestration_dir / "dagster-dev.log"
    key_scan.watch_file("dagster dev output", log)
    wait_clear_of_the_hour(CLEAR_OF_THE_HOUR_SECONDS)
    port = _free_port()
    environment = child_environment({
        **worker_environment,
        "DAGSTER_HOME": str(home),
        "MELTANO_PROJECT_ROOT": str(meltano_project.root),
        "MELTANO_RUN_STATE_ID_SUFFIX": "ui",
        "TARGET_DUCKDB_FILEPATH": str(orchestration_dir / "ui-warehouse.duckdb"),
        "TAP_GTMCLI_API_URL": sandbox.url,
        "TAP_GTMCLI_API_KEY": API_KEY,
        "TAP_GTMCLI_WAIT_FOR_JOBS": "0",
        "GTMCLI_SENSOR_INTERVAL_SECONDS": "2",
    })
    with log.open("wb") as output:
        # Its own process group: dagster dev's webserver, daemon and code servers stop
        # with it.
        process = subprocess.Popen(
            [DAGSTER, "dev", "-m", LOCATION, "-h", "127.0.0.1", "-p", str(port)],
            cwd=orchestration_dir, env=environment, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    session = requests.Session()
    session.trust_env = False
    ui = DagsterUI(f"http://127.0.0.1:{port}", home, log, session)
    launched = time.monotonic()
    try:
        def answers() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                return bool(ui.query(REPOSITORY_QUERY)["repositoriesOrError"].get("nodes"))
            except requests.RequestException:
                return False

        wait_for("the UI to serve the code location", answers, STARTUP_SECONDS)
        ui.startup_seconds = time.monotonic() - launched
        # The code location as it was served, then no schedule: a cron tick would start a
        # run of the job under test (the hourly one did, when a run crossed minute 0).
        (ui.repository,) = ui.query(REPOSITORY_QUERY)["repositoriesOrError"]["nodes"]
        ui.stop_schedules()
        yield ui
    finally:
        session.close()
        # As `make orchestrate` stops it: SIGINT, then SIGKILL if Dagster 1.13's daemon
        # hangs on its way out (seen under load). Meltano's runs are in the group too.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_the_ui_queues_overlapping_runs_and_the_sensor_starts_one_when_jobs_finish(
    dagster_ui: DagsterUI, sandbox: SandboxServer, postgres_server: PostgresServer,
    orchestration_dir: Path, duckdb_query: Callable[[Path, str], list[list[Any]]],
    print_figures: Callable[[str], None],
):
    started = time.monotonic()
    ui = dagster_ui
    warehouse = orchestration_dir / "ui-warehouse.duckdb"

    # The code location as the UI showed it: every job, both schedules running, the
    # sensor. (The fixture then stopped the schedules, which the UI now shows.)
    repository = ui.repository
    assert repository["location"]["name"] == LOCATION
    jobs = {job["name"]: {tag["key"]: tag["value"] for tag in job["tags"]}
            for job in repository["jobs"]}
    assert set(jobs) == {"gtmcli_submit", "gtmcli_extract", "gtmcli_validate_and_collect",
                         "gtmcli_enrich_contacts", "gtmcli_extract_accounts"}
    assert jobs[JOB]["meltano/state_ids"] == STATE_ID
    assert jobs["gtmcli_extract_accounts"]["meltano/state_ids"] == (
        "dev:tap-gtmcli-account-a-to-target-postgres-per-account:ui,"
        "dev:tap-gtmcli-account-b-to-target-postgres-per-account:ui")
    assert {(s["name"], s["pipelineName"], s["cronSchedule"], s["executionTimezone"],
             s["scheduleState"]["status"]) for s in repository["schedules"]} == {
        ("gtmcli_submit_daily", "gtmcli_submit", "0 0 * * *", "UTC", "RUNNING"),
        ("gtmcli_extract_hourly", JOB, "0 * * * *", "UTC", "RUNNING"),
    }
    now = ui.query(REPOSITORY_QUERY)["repositoriesOrError"]["nodes"][0]
    assert {s["scheduleState"]["status"] for s in now["schedules"]} == {"STOPPED"}
    (sensor,) = repository["sensors"]
    assert (sensor["name"], sensor["minIntervalSeconds"], sensor["targets"]) == (
        SENSOR, 2, [{"pipelineName": JOB}])
    assert sensor["sensorState"]["status"] == "RUNNING"

    # The daemon ticks the sensor at once: the sandbox has no job yet, so it skips.
    first = wait_for("the sensor's first tick", ui.ticks, 120)[0]
    assert (first["status"], first["skipReason"]) == (
        "SKIPPED", "no GTMCLI job finished since the last look")

    # Two overlapping runs of one pipeline, launched through GraphQL as the UI's Launch
    # button does. The jobs are seeded once the first is queued: it lists them well after
    # (a run worker, a step process and Meltano start first), and the sensor, seeing a
    # run queued, does not look.
    first_run = ui.launch(JOB)
    sandbox.seed_jobs("validate", 180, jobs=2, seed="ui")
    sandbox.seed_jobs("find", 25, seed="ui")
    sandbox.seed_jobs("validate", 8, status="failed", seed="ui")
    second_run = ui.launch(JOB)
    statuses: list[tuple[str, str]] = []

    def both_finished() -> bool:
        pair = (ui.run(first_run)["status"], ui.run(second_run)["status"])
        statuses.append(pair)
        return FINISHED.issuperset(pair)

    wait_for("both runs to finish", both_finished, 2 * RUN_SECONDS)
    runs = {run_id: ui.run(run_id) for run_id in (first_run, second_run)}
    assert [runs[run_id]["status"] for run_id in (first_run, second_run)] == [
        "SUCCESS", "SUCCESS"], ui.log.read_text()[-3000:]
    # The second waited in the queue the whole time the first was under way ...
    assert ("STARTED", "QUEUED") in statuses
    assert all(second == "QUEUED" for first_status, second in statuses
               if first_status in {"QUEUED", "STARTING", "STARTED"})
    assert runs[second_run]["startTime"] >= runs[first_run]["endTime"]
    # ... and Meltano saw two runs of the state id, one after the other, none refused;
    # the first loaded everything, the second nothing twice.
    (_, start_1, end_1), (_, start_2, _) = meltano_runs(postgres_server, STATE_ID)
    assert [row[0] for row in meltano_runs(postgres_server, STATE_ID)] == ["SUCCESS"] * 2
    assert float(start_2) >= float(end_1) > float(start_1)
    truth = jobs_by_id(sandbox, API_KEY)
    assert_warehouse_holds_exactly(partial(duckdb_query, warehouse), truth,
                                   warehouse="the UI's DuckDB")
    assert jobs_bookmark(stored_state(postgres_server, STATE_ID)) == settled_jobs_bookmark(truth)

    # While either run was queued or in progress, every tick skipped without a look;
    # once both were done, a tick saw the 4 finished jobs and started one run.
    busy = [tick for tick in ui.ticks()
            if runs[first_run]["startTime"] <= tick["timestamp"] < runs[second_run]["endTime"]]
    assert busy, "no tick while the runs were queued or in progress"
    assert {(tick["status"], tick["skipReason"]) for tick in busy} == {
        ("SKIPPED", f"a {JOB} run is queued or in progress; looking again next tick")}
    requested = wait_for("a run requested by the sensor", lambda: [
        tick for tick in ui.ticks() if tick["runIds"]], 120)
    (tick,) = requested
    assert tick["status"] == "SUCCESS"
    assert tick["timestamp"] >= runs[second_run]["endTime"]
    (sensor_run,) = tick["runIds"]
    run = ui.run(sensor_run)
    tags = {tag["key"]: tag["value"] for tag in run["tags"]}
    assert tags["gtmcli/newly_finished_jobs"] == "4"
    assert tags["meltano/state_ids"] == STATE_ID
    # The daemon takes it from the queue and starts it (what it loads is the runs' above:
    # nothing new). It is interrupted with dagster dev at teardown.
    wait_for("the sensor's run to start",
             lambda: ui.run(sensor_run)["status"] in {"STARTING", "STARTED", *FINISHED}, 60)
    every_run = {run["runId"]: run["tags"] for run in ui.runs(JOB)}
    assert set(every_run) == {first_run, second_run, sensor_run}, every_run
    ticks = ui.ticks()

    stored = [path.read_bytes().decode(errors="replace")
              for path in ui.home.rglob("*") if path.is_file()]
    assert_no_key(ui.log.read_text(), *stored, *(str(tick) for tick in ticks),
                  stored_state(postgres_server, STATE_ID))
    durations = ", ".join(f"{runs[run_id]['endTime'] - runs[run_id]['startTime']:.1f} s"
                          for run_id in (first_run, second_run))
    print_figures(f"dagster dev: UI up in {ui.startup_seconds:.1f} s, test body "
                  f"{time.monotonic() - started:.1f} s, the two runs {durations}")
