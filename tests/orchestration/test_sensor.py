"""The finished-jobs sensor, ticked by hand against a sandbox whose clock the test moves.

Request counts come from the sandbox's own stats: a tick costs one `GET /v1/jobs`, or
none while a run of the job is in progress.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest

from tap_gtmcli.orchestration.definitions import build_definitions
from tap_gtmcli.orchestration.finished_jobs import FinishedCursor
from tap_gtmcli.sandbox import SandboxServer
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.sandboxes import fast_sandbox

SENSOR = "gtmcli_extract_on_finished_gtmcli_jobs"
#: Seconds a sandbox job stays pending: the jobs finish when the test says so.
START_DELAY = 600.0


@pytest.fixture
def slow_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[SandboxServer]:
    """A sandbox whose jobs finish only when its clock is moved, named by the variables
    tap-gtmcli reads."""
    with fast_sandbox(start_delay=START_DELAY) as server:
        monkeypatch.setenv("MELTANO_ENVIRONMENT", "dev")
        monkeypatch.setenv("TAP_GTMCLI_API_URL", server.url)
        monkeypatch.setenv("TAP_GTMCLI_API_KEY", API_KEY)
        yield server


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    """One Dagster instance (run storage) for the module's ticks."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture(scope="module")
def repository() -> dg.RepositoryDefinition:
    return build_definitions().get_repository_def()


class Ticker:
    """Evaluates the sensor as the daemon would, carrying its cursor between ticks."""

    def __init__(self, instance: dg.DagsterInstance, repository: dg.RepositoryDefinition) -> None:
        self.sensor = repository.get_sensor_def(SENSOR)
        self.job = repository.get_job(self.sensor.job_name)
        self.instance = instance
        self.cursor: str | None = None
        self.outputs: list[str] = []
        self.last: Any = None  # the last tick's SensorExecutionData

    def tick(self) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor)
        data = self.sensor.evaluate_tick(context)
        self.last = data
        self.cursor = data.cursor if data.cursor is not None else self.cursor
        self.outputs.append(repr(data))
        return list(data.run_requests or [])


def list_requests(server: SandboxServer) -> int:
    return int(server.stats()["requests"].get("GET /v1/jobs", 0))


def test_one_run_once_jobs_finish_and_none_when_nothing_is_new(
    slow_sandbox: SandboxServer, instance: dg.DagsterInstance,
    repository: dg.RepositoryDefinition,
):
    ticker = Ticker(instance, repository)

    assert ticker.tick() == []                      # no job at all
    slow_sandbox.seed_jobs("validate", 20, jobs=2, status="pending")
    assert ticker.tick() == []                      # submitted, not finished
    assert list_requests(slow_sandbox) == 2

    slow_sandbox.clock.advance(START_DELAY + 1)
    requests = ticker.tick()                        # both finished: one run
    assert len(requests) == 1
    assert requests[0].tags["gtmcli/newly_finished_jobs"] == "2"
    assert ticker.tick() == []                      # seen already
    assert ticker.tick() == []
    assert list_requests(slow_sandbox) == 5

    slow_sandbox.seed_jobs("find", 5, status="failed")
    again = ticker.tick()                           # a failed job counts as finished
    assert len(again) == 1
    assert again[0].tags["gtmcli/newly_finished_jobs"] == "1"
    assert again[0].run_key != requests[0].run_key
    assert list_requests(slow_sandbox) == 6
    assert_no_key(*ticker.outputs, ticker.cursor)


def test_no_request_while_a_run_is_in_progress_and_the_finish_is_not_lost(
    slow_sandbox: SandboxServer, instance: dg.DagsterInstance,
    repository: dg.RepositoryDefinition,
):
    ticker = Ticker(instance, repository)
    assert ticker.tick() == []
    slow_sandbox.seed_jobs("validate", 10, status="completed")
    run = instance.create_run_for_job(ticker.job, status=dg.DagsterRunStatus.STARTED)

    assert ticker.tick() == []
    assert list_requests(slow_sandbox) == 1         # the in-progress tick asked nothing

    instance.report_run_canceled(run)
    requests = ticker.tick()
    assert len(requests) == 1
    assert list_requests(slow_sandbox) == 2
    assert_no_key(*ticker.outputs, ticker.cursor)


def test_a_refused_key_fails_the_tick_naming_the_setting_not_the_key(
    slow_sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch,
    instance: dg.DagsterInstance, repository: dg.RepositoryDefinition,
):
    monkeypatch.setenv("TAP_GTMCLI_API_KEY", API_KEY + "-revoked")
    with pytest.raises(Exception, match="api_key") as failure:
        Ticker(instance, repository).tick()
    assert_no_key(str(failure.value), repr(failure.value.__cause__))


def test_an_unreachable_api_skips_the_tick_and_keeps_the_cursor(
    slow_sandbox: SandboxServer, instance: dg.DagsterInstance,
    repository: dg.RepositoryDefinition,
):
    ticker = Ticker(instance, repository)
    (seen,) = slow_sandbox.seed_jobs("validate", 10, status="completed", seed="seen")
    assert len(ticker.tick()) == 1                  # a cursor holding that job
    cursor = ticker.cursor
    assert FinishedCursor.decode(cursor).ids == {seen}

    (later,) = slow_sandbox.seed_jobs("validate", 10, status="completed", seed="later")
    slow_sandbox.add_fault_rules([{"method": "GET", "path_prefix": "/v1/jobs",
                                   "status": 503}])
    assert ticker.tick() == []
    assert "503" in ticker.outputs[-1]
    assert ticker.last.cursor == cursor             # what the daemon stores: unchanged

    requests = ticker.tick()                        # the next tick is the retry
    assert len(requests) == 1
    assert requests[0].tags["gtmcli/newly_finished_jobs"] == "1"   # only the later job
    assert later in FinishedCursor.decode(ticker.cursor).ids
    assert list_requests(slow_sandbox) == 3
    assert_no_key(*ticker.outputs, ticker.cursor)


def test_no_key_for_the_environment_fails_the_tick_naming_the_variable(
    slow_sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch,
    instance: dg.DagsterInstance, repository: dg.RepositoryDefinition,
):
    # prod has no key in meltano.yml: it comes from the variable, here unset.
    monkeypatch.setenv("MELTANO_ENVIRONMENT", "prod")
    monkeypatch.delenv("TAP_GTMCLI_API_KEY")
    with pytest.raises(Exception, match="set TAP_GTMCLI_API_KEY"):
        Ticker(instance, repository).tick()
    assert list_requests(slow_sandbox) == 0
