"""`meltano run tap-gtmcli-batch target-postgres`: BATCH files loaded with COPY, exactly.

The rows in PostgreSQL are compared field by field with what the sandbox serves (plus the
fields the tap adds); PostgreSQL's own statistics (pg_stat_statements) show every row
went in through a COPY of at most BATCH_SIZE rows, one per file; a full-refresh rerun
re-sends every row and must leave one copy of each, and a run with nothing new must write
no file and load nothing.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.api.paging import iterate_pages
from tap_gtmcli.demo.meltano_project import MeltanoRun
from tap_gtmcli.tap.tap import TapGTMCLI
from tests.helpers.key_scan import assert_no_key
from tests.helpers.meltano import Pipelines
from tests.helpers.postgres import PostgresServer

from .test_meltano_pipelines import NOTHING_NEW, assert_small_state, submit_more

pytestmark = pytest.mark.e2e

STATE_ID = "dev:tap-gtmcli-batch-to-target-postgres"
SCHEMA = "gtmcli_batch"
#: Small files, so that runs span several files and job boundaries fall inside them.
BATCH_SIZE = 1000
SDC_COLUMNS = ("_sdc_extracted_at", "_sdc_received_at", "_sdc_batched_at",
               "_sdc_deleted_at", "_sdc_sequence", "_sdc_table_version", "_sdc_sync_started_at")


def sandbox_rows(pipelines: Pipelines, jobs: dict[str, dict[str, Any]]) -> dict[tuple, dict]:
    """Every result row the sandbox serves, as tap-gtmcli emits it, by primary key."""
    rows: dict[tuple, dict] = {}
    for job_id, job in jobs.items():
        if job["status"] != "completed":
            continue
        pages = iterate_pages(lambda page, job_id=job_id: pipelines.sandbox.get(
            f"/v1/jobs/{job_id}/results?page={page}&per_page=1000"))
        number = 0
        for body in pages:
            for row in body["results"]:
                number += 1
                rows[job_id, number] = {**row, "row_number": number, "job_id": job_id,
                                        "job_type": job["type"], "additional_fields": None}
    return rows


def without_nulls(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if value is not None}


def loaded_rows(postgres: PostgresServer) -> list[dict[str, Any]]:
    return [json.loads(line[0]) for line in postgres.query(
        f"select row_to_json(r) from {SCHEMA}.job_results r")]


def batch_file_rows(batch_dir: Path) -> dict[str, int]:
    """Rows per stream in every batch file written so far."""
    counts: dict[str, int] = {}
    for path in batch_dir.glob("*.jsonl.gz"):
        stream = path.name.removeprefix("tap-gtmcli--").split("-", 1)[0]
        with gzip.open(path) as lines:
            counts[stream] = counts.get(stream, 0) + sum(1 for _ in lines)
    return counts


def copies(postgres: PostgresServer) -> dict[str, list[int]]:
    """Rows of each COPY since the statistics were last reset, by the table it filled
    ("jobs" or "job_results", told by the columns): target-postgres copies each file
    into a temporary table of its own, so each COPY is one entry of pg_stat_statements."""
    found: dict[str, list[int]] = {"jobs": [], "job_results": []}
    for query, calls, rows in postgres.query(
            "select query, calls, rows from pg_stat_statements where query ilike 'copy %'"):
        assert int(calls) == 1, f"one COPY per temporary table, not {calls}: {query}"
        found["job_results" if '"row_number"' in query else "jobs"].append(int(rows))
    return found


def rows_inserted_from_values(postgres: PostgresServer) -> int:
    """Rows any INSERT ... VALUES statement wrote (the path `use_copy: false` takes)."""
    rows = postgres.query("select coalesce(sum(rows), 0) from pg_stat_statements "
                          "where query ilike 'insert%values%'")
    return int(rows[0][0])


def test_batch_runs_into_postgres_are_exact_upsert_and_then_load_nothing(
    pipelines: Pipelines, submitted: MeltanoRun, postgres_server: PostgresServer,
) -> None:
    batch_dir = pipelines.workdir / "batches"
    env = {"TARGET_POSTGRES_PORT": str(postgres_server.port),
           # Trust authentication ignores the password, but target-postgres insists on one.
           "TARGET_POSTGRES_PASSWORD": "unused-with-trust-auth",
           "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": SCHEMA,
           "TAP_GTMCLI_BATCH_BATCH_CONFIG_STORAGE_ROOT": batch_dir.as_uri(),
           "TAP_GTMCLI_BATCH_BATCH_CONFIG_BATCH_SIZE": str(BATCH_SIZE)}

    def run(name: str, *options: str) -> MeltanoRun:
        return pipelines.run(*options, "tap-gtmcli-batch", "target-postgres", log_name=name,
                             env=env)

    def one(sql: str) -> int:
        return int(postgres_server.query(sql)[0][0])

    postgres_server.query("select pg_stat_statements_reset()")
    runs = [run("batch-postgres-1")]
    submit_more(pipelines, "batch-postgres-submit-find")
    jobs, result_rows = pipelines.sandbox_truth()
    runs.append(run("batch-postgres-2"))
    loaded_by = copies(postgres_server)
    assert rows_inserted_from_values(postgres_server) == 0

    assert one(f"select count(*) from {SCHEMA}.jobs") == len(jobs)
    assert one(f"select count(distinct id) from {SCHEMA}.jobs") == len(jobs)
    assert dict(postgres_server.query(f"select id, status from {SCHEMA}.jobs")) == {
        job_id: job["status"] for job_id, job in jobs.items()}
    expected = sandbox_rows(pipelines, jobs)
    assert len(expected) == result_rows
    loaded = loaded_rows(postgres_server)
    # Exact rows and keys: the values GTMCLI served (a column of the other job type's
    # fields is NULL, as in RECORD mode), and one column per schema property.
    assert {(r["job_id"], r["row_number"]): without_nulls(r) for r in loaded} == {
        key: without_nulls(row) for key, row in expected.items()}
    assert len(loaded) == result_rows
    properties = TapGTMCLI(config={"api_key": "unused"}).streams["job_results"].schema[
        "properties"]
    assert {column for row in loaded for column in row} == {*properties, *SDC_COLUMNS}
    # target-postgres sets no _sdc_* column for rows it reads from files (README).
    assert {column for row in loaded for column in row if column.startswith("_sdc_")}
    assert all(row[column] is None for row in loaded for column in row
               if column.startswith("_sdc_"))
    # Every row went in through COPY, from files of at most BATCH_SIZE rows each: one
    # COPY per file, jobs rows too, and together exactly the rows the files hold.
    in_files = batch_file_rows(batch_dir)
    assert in_files["job_results"] == result_rows
    assert sum(loaded_by["job_results"]) == result_rows
    # (a job row twice in one file is loaded once: the loader keeps the last per key)
    assert len(jobs) <= sum(loaded_by["jobs"]) <= in_files["jobs"]
    assert all(0 < rows <= BATCH_SIZE for stream in loaded_by for rows in loaded_by[stream])
    assert len(loaded_by["job_results"]) >= -(-result_rows // BATCH_SIZE)  # several files
    assert len(loaded_by["job_results"]) == len(list(batch_dir.glob("tap-gtmcli--job_results-*")))

    # A full refresh re-sends every row: the upsert keeps one copy of each.
    postgres_server.query("select pg_stat_statements_reset()")
    runs.append(run("batch-postgres-refresh", "--full-refresh"))
    assert batch_file_rows(batch_dir)["job_results"] == 2 * result_rows
    assert sum(copies(postgres_server)["job_results"]) == result_rows
    assert rows_inserted_from_values(postgres_server) == 0
    assert one(f"select count(*) from {SCHEMA}.job_results") == result_rows
    assert one(f"select count(*) from (select distinct job_id, row_number "
               f"from {SCHEMA}.job_results) as k") == result_rows
    assert one(f"select count(*) from {SCHEMA}.jobs") == len(jobs)

    # Nothing new: no file written, nothing loaded.
    files_before = sorted(batch_dir.iterdir())
    postgres_server.query("select pg_stat_statements_reset()")
    runs.append(run("batch-postgres-nothing-new"))
    assert copies(postgres_server) == {"jobs": [], "job_results": []}
    assert NOTHING_NEW in runs[-1].log_path.read_text()
    assert sorted(batch_dir.iterdir()) == files_before
    assert one(f"select count(*) from {SCHEMA}.job_results") == result_rows
    assert_small_state(pipelines, STATE_ID)

    # Neither the key nor its tail: in the run logs, the BATCH files, the warehouse.
    for output in [*(r.log_path for r in runs), *batch_dir.iterdir()]:
        text = (gzip.decompress(output.read_bytes()) if output.suffix == ".gz"
                else output.read_bytes())
        assert_no_key(text)
    assert_no_key(postgres_server.query(
        f"select row_to_json(r) from {SCHEMA}.job_results r"),
        postgres_server.query(f"select row_to_json(r) from {SCHEMA}.jobs r"))
