"""The Dagster job of `gtmcli-extract`, run in process: real Meltano, sandbox, DuckDB."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tap_gtmcli.orchestration.definitions import build_definitions
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.orchestration import (
    jobs_bookmark,
    jobs_by_id,
    settled_jobs_bookmark,
    stored_state,
)
from tests.helpers.postgres import PostgresServer
from tests.helpers.sandboxes import fast_sandbox
from tests.helpers.warehouse import assert_warehouse_holds_exactly

pytestmark = pytest.mark.e2e


def test_extract_job_lands_exactly_the_sandbox_rows(
    in_worker: pytest.MonkeyPatch,
    postgres_server: PostgresServer,
    worker_environment: dict[str, str],
    duckdb_query: Callable[[Path, str], list[list[Any]]],
    capfd: pytest.CaptureFixture[str],
):
    with fast_sandbox() as sandbox:
        sandbox.seed_jobs("validate", 240, jobs=2, seed="extract")
        sandbox.seed_jobs("find", 35, seed="extract")
        sandbox.seed_jobs("validate", 12, status="failed", seed="extract")
        in_worker.setenv("TAP_GTMCLI_API_URL", sandbox.url)
        in_worker.setenv("TAP_GTMCLI_API_KEY", API_KEY)
        jobs = jobs_by_id(sandbox, API_KEY)

        job = build_definitions().get_job_def("gtmcli_extract")
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(instance=instance)
            logs = "\n".join(str(entry) for entry in instance.all_logs(result.run_id))
    printed = capfd.readouterr()

    assert result.success, logs[-3000:]
    assert "Incremental state has been updated" in logs
    warehouse = Path(worker_environment["TARGET_DUCKDB_FILEPATH"])
    assert_warehouse_holds_exactly(partial(duckdb_query, warehouse), jobs, warehouse="DuckDB")
    state = stored_state(postgres_server, "dev:tap-gtmcli-to-target-duckdb")
    # Exactly: the newest of the sandbox's jobs, nothing open; job_results (a child of
    # jobs, read once per completed job) keeps no bookmark of its own.
    assert jobs_bookmark(state) == settled_jobs_bookmark(jobs)
    assert state["singer_state"]["bookmarks"]["job_results"] == {}
    assert set(state["singer_state"]["bookmarks"]) == {"jobs", "job_results"}
    assert_no_key(logs, printed.out, printed.err, state)
