"""`meltano run tap-gtmcli-batch target-postgres`: BATCH files loaded with COPY, exactly.

The rows in PostgreSQL are compared field by field with what the sandbox serves (plus the
fields the tap adds); a trigger on each temporary table the loader creates counts the
rows of each statement that fills it, which shows every row went in through a COPY of at
most BATCH_SIZE rows, one per file; a full-refresh rerun
re-sends every row and must leave one copy of each, and a run with nothing new must write
no file and load nothing.
"""

from __future__ import annotations

import gzip
import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.api.paging import iterate_pages
from tap_gtmcli.demo.meltano_project import MeltanoRun
from tap_gtmcli.tap.tap import TapGTMCLI
from tests.helpers.key_scan import assert_no_key
from tests.helpers.meltano import NOTHING_NEW, Pipelines, assert_small_state, submit_more
from tests.helpers.postgres import PostgresServer
from tests.helpers.warehouse import assert_warehouse_holds_exactly

pytestmark = pytest.mark.e2e

STATE_ID = "dev:tap-gtmcli-batch-to-target-postgres"
SCHEMA = "gtmcli_batch"
#: A database of its own, where the statement audit below is installed.
DATABASE = "gtmcli_batch_copy"
#: target-postgres fills a temporary table per batch (COPY with `use_copy`, else INSERT)
#: and upserts from it. An event trigger gives each new temporary table a statement
#: trigger that records how many rows each statement filling it added, and its text.
STATEMENT_AUDIT = """
CREATE TABLE public.rows_added (id serial PRIMARY KEY, rows bigint NOT NULL,
                                query text NOT NULL);
CREATE FUNCTION public.count_rows_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.rows_added (rows, query) SELECT count(*), current_query() FROM new_rows;
  RETURN NULL;
END $$;
CREATE FUNCTION public.audit_temporary_tables() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE command record;
BEGIN
  FOR command IN SELECT * FROM pg_event_trigger_ddl_commands()
                 WHERE command_tag = 'CREATE TABLE' LOOP
    IF (SELECT relpersistence FROM pg_class WHERE oid = command.objid) = 't' THEN
      EXECUTE format('CREATE TRIGGER count_rows_added AFTER INSERT ON %s REFERENCING NEW '
                     'TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION '
                     'public.count_rows_added()', command.objid::regclass);
    END IF;
  END LOOP;
END $$;
CREATE EVENT TRIGGER audit_temporary_tables ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
  EXECUTE FUNCTION public.audit_temporary_tables();
"""
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
            f"/v1/jobs/{job_id}/results?page={page}&per_page=1000"), "results")
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
        f"select row_to_json(r) from {SCHEMA}.job_results r", database=DATABASE)]


def batch_file_rows(batch_dir: Path) -> dict[str, int]:
    """Rows per stream in every batch file written so far."""
    counts: dict[str, int] = {}
    for path in batch_dir.glob("*.jsonl.gz"):
        stream = path.name.removeprefix("tap-gtmcli--").split("-", 1)[0]
        with gzip.open(path) as lines:
            counts[stream] = counts.get(stream, 0) + sum(1 for _ in lines)
    return counts


def rows_added(postgres: PostgresServer) -> dict[str, list[int]]:
    """Rows each statement added to the loader's temporary tables since the last call,
    by the table it was filling ("jobs" or "job_results", told by the columns), and by
    kind of statement ("COPY" or anything else)."""
    found: dict[str, list[int]] = {"jobs": [], "job_results": [], "not COPY": []}
    for rows, query in postgres.query("select rows, query from public.rows_added order by id",
                                      database=DATABASE):
        if not query.lstrip().upper().startswith("COPY "):
            found["not COPY"].append(int(rows))
        else:
            found["job_results" if '"row_number"' in query else "jobs"].append(int(rows))
    postgres.query("truncate public.rows_added", database=DATABASE)
    return found


def test_batch_runs_into_postgres_are_exact_upsert_and_then_load_nothing(
    pipelines: Pipelines, submitted: MeltanoRun, postgres_server: PostgresServer,
) -> None:
    batch_dir = pipelines.workdir / "batches"
    env = {"TARGET_POSTGRES_PORT": str(postgres_server.port),
           # Trust authentication ignores the password, but target-postgres insists on one.
           "TARGET_POSTGRES_PASSWORD": "unused-with-trust-auth",
           "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": SCHEMA,
           "TAP_GTMCLI_BATCH_BATCH_CONFIG_STORAGE_ROOT": batch_dir.as_uri(),
           "TAP_GTMCLI_BATCH_BATCH_CONFIG_BATCH_SIZE": str(BATCH_SIZE),
           "TARGET_POSTGRES_DATABASE": DATABASE}
    postgres_server.query(f"create database {DATABASE}")
    postgres_server.query(STATEMENT_AUDIT, database=DATABASE)

    def run(name: str, *options: str) -> MeltanoRun:
        return pipelines.run(*options, "tap-gtmcli-batch", "target-postgres", log_name=name,
                             env=env)

    in_database = partial(postgres_server.query, database=DATABASE)

    runs = [run("batch-postgres-1")]
    submit_more(pipelines, "batch-postgres-submit-find")
    jobs, result_rows = pipelines.sandbox_truth()
    runs.append(run("batch-postgres-2"))
    loaded_by = rows_added(postgres_server)

    assert_warehouse_holds_exactly(in_database, jobs, schema=SCHEMA, warehouse="BATCH's schema")
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
    assert loaded_by["not COPY"] == []
    assert in_files["job_results"] == result_rows
    assert sum(loaded_by["job_results"]) == result_rows
    # (a job row twice in one file is loaded once: the loader keeps the last per key)
    assert len(jobs) <= sum(loaded_by["jobs"]) <= in_files["jobs"]
    assert all(0 < rows <= BATCH_SIZE for stream in loaded_by for rows in loaded_by[stream])
    assert len(loaded_by["job_results"]) >= -(-result_rows // BATCH_SIZE)  # several files
    assert len(loaded_by["job_results"]) == len(list(batch_dir.glob("tap-gtmcli--job_results-*")))

    # A full refresh re-sends every row: the upsert keeps one copy of each.
    runs.append(run("batch-postgres-refresh", "--full-refresh"))
    assert batch_file_rows(batch_dir)["job_results"] == 2 * result_rows
    refreshed = rows_added(postgres_server)
    assert sum(refreshed["job_results"]) == result_rows and refreshed["not COPY"] == []
    assert all(rows <= BATCH_SIZE for rows in refreshed["job_results"])
    assert_warehouse_holds_exactly(in_database, jobs, schema=SCHEMA,
                                   warehouse="BATCH's schema after a full refresh")

    # Nothing new: no file written, nothing loaded.
    files_before = sorted(batch_dir.iterdir())
    runs.append(run("batch-postgres-nothing-new"))
    assert rows_added(postgres_server) == {"jobs": [], "job_results": [], "not COPY": []}
    assert NOTHING_NEW in runs[-1].log_path.read_text()
    assert sorted(batch_dir.iterdir()) == files_before
    assert_warehouse_holds_exactly(in_database, jobs, schema=SCHEMA,
                                   warehouse="BATCH's schema after nothing new")
    assert_small_state(pipelines, STATE_ID)

    # Neither the key nor its tail: in the run logs, the BATCH files, the warehouse.
    for output in [*(r.log_path for r in runs), *batch_dir.iterdir()]:
        text = (gzip.decompress(output.read_bytes()) if output.suffix == ".gz"
                else output.read_bytes())
        assert_no_key(text)
    assert_no_key(loaded_rows(postgres_server), postgres_server.query(
        f"select row_to_json(r) from {SCHEMA}.jobs r", database=DATABASE))
