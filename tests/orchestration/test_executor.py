"""README "Scheduling": side-by-side tasks run at most `max_concurrent` at once, the CPU
count unless the run config sets `execution: {config: {max_concurrent: N}}`.

The executor Dagster builds for a run is read back (through Dagster 1.13's own executor
construction; the version is pinned in pyproject.toml); no Meltano run is needed.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import dagster as dg
import pytest
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.executor.init import InitExecutorContext
from dagster._core.instance import DagsterInstance
from dagster._core.system_config.objects import ResolvedRunConfig

from tap_gtmcli.orchestration.definitions import defs

JOBS = ("gtmcli_submit", "gtmcli_extract", "gtmcli_validate_and_collect",
        "gtmcli_enrich_contacts", "gtmcli_extract_accounts")


def max_concurrent(job: dg.JobDefinition, run_config: dict[str, Any]) -> int:
    """How many ops the executor of a run of `job` with `run_config` runs at once."""
    resolved = ResolvedRunConfig.build(job, run_config)
    with DagsterInstance.ephemeral() as instance:
        executor = job.executor_def.executor_creation_fn(InitExecutorContext(
            job=InMemoryJob(job), executor_def=job.executor_def,
            executor_config=resolved.execution.execution_engine_config, instance=instance))
    return int(executor._max_concurrent)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", JOBS)
def test_a_job_runs_at_most_the_cpu_count_of_tasks_at_once_by_default(name: str) -> None:
    job = defs.resolve_job_def(name)
    assert job.executor_def is dg.multiprocess_executor
    assert max_concurrent(job, {}) == multiprocessing.cpu_count()


def test_the_run_config_sets_max_concurrent() -> None:
    job = defs.resolve_job_def("gtmcli_extract_accounts")
    assert max_concurrent(job, {"execution": {"config": {"max_concurrent": 1}}}) == 1
    assert max_concurrent(job, {"execution": {"config": {"max_concurrent": 7}}}) == 7
