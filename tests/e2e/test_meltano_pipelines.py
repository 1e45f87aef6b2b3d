"""Real `meltano run` of both halves against the sandbox, into DuckDB and PostgreSQL."""

from __future__ import annotations

import csv
import re
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests

from tap_gtmcli.demo.generate_contacts import CSV_PATH
from tap_gtmcli.demo.meltano_project import MeltanoRun
from tap_gtmcli.demo.sandbox_process import SandboxProcess
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.meltano import NOTHING_NEW, Pipelines, assert_small_state, submit_more
from tests.helpers.postgres import PostgresServer
from tests.helpers.warehouse import assert_warehouse_holds_exactly

pytestmark = pytest.mark.e2e

STATE_ID_DUCKDB = "dev:tap-gtmcli-to-target-duckdb"
STATE_ID_POSTGRES = "dev:tap-gtmcli-to-target-postgres"
def test_incremental_runs_into_duckdb_and_postgres_match_the_sandbox(
    pipelines: Pipelines,
    submitted: MeltanoRun,
    duckdb_query: Callable[[Path, str], list[list[Any]]],
    postgres_server: PostgresServer,
) -> None:
    """Both warehouses, each with its own state id: a first run, a new job (one
    submission serves both), a second run that brings exactly what is new, a third
    that finds nothing."""
    warehouse = pipelines.workdir / "duckdb-extract.duckdb"
    duckdb_env = {"TARGET_DUCKDB_FILEPATH": str(warehouse)}
    # Trust authentication ignores the password, but target-postgres insists on one.
    postgres_env = {"TARGET_POSTGRES_PORT": str(postgres_server.port),
                    "TARGET_POSTGRES_PASSWORD": "unused-with-trust-auth"}

    in_duckdb = partial(duckdb_query, warehouse)

    first = pipelines.run("gtmcli-extract", log_name="duckdb-extract-1", env=duckdb_env)
    assert first.loaded.get("jobs", 0) >= 1
    pipelines.run("tap-gtmcli", "target-postgres", log_name="postgres-extract-1",
                  env=postgres_env)
    submit_more(pipelines, "incremental-submit-find")
    jobs, _ = pipelines.sandbox_truth()
    second = pipelines.run("gtmcli-extract", log_name="duckdb-extract-2", env=duckdb_env)
    assert second.loaded.get("jobs", 0) >= 1
    pipelines.run("tap-gtmcli", "target-postgres", log_name="postgres-extract-2",
                  env=postgres_env)

    # Each warehouse: every job once with its status, every result row once.
    assert_warehouse_holds_exactly(in_duckdb, jobs, warehouse="DuckDB")
    assert_warehouse_holds_exactly(postgres_server.query, jobs, warehouse="PostgreSQL")

    # Nothing new: nothing loaded, nothing changed, the state as small as ever.
    third = pipelines.run("gtmcli-extract", log_name="duckdb-extract-3", env=duckdb_env)
    assert third.loaded == {}
    assert NOTHING_NEW in third.log_path.read_text()
    assert_warehouse_holds_exactly(in_duckdb, jobs, warehouse="DuckDB after nothing new")
    assert_small_state(pipelines, STATE_ID_DUCKDB)
    third = pipelines.run("tap-gtmcli", "target-postgres", log_name="postgres-extract-3",
                          env=postgres_env)
    assert NOTHING_NEW in third.log_path.read_text()
    assert_warehouse_holds_exactly(postgres_server.query, jobs,
                                   warehouse="PostgreSQL after nothing new")
    assert_small_state(pipelines, STATE_ID_POSTGRES)


def test_enrich_mapping_lands_enriched_contacts(
    pipelines: Pipelines, duckdb_query: Callable[[Path, str], list[list[Any]]],
) -> None:
    warehouse = pipelines.workdir / "duckdb-enrich.duckdb"
    run = pipelines.run("--full-refresh", "tap-spreadsheets", "gtmcli-enrich", "target-duckdb",
                        log_name="enrich", env={"TARGET_DUCKDB_FILEPATH": str(warehouse)})

    with CSV_PATH.open(encoding="utf-8") as handle:
        contacts = list(csv.DictReader(handle))
    assert run.loaded["contacts"] == len(contacts)
    rows = duckdb_query(warehouse, "select id, gtmcli_status, gtmcli_provider, gtmcli_job_id "
                                   "from gtmcli.contacts")
    assert len(rows) == len(contacts)
    rejected = {row[0] for row in duckdb_query(
        warehouse, "select json_extract_string(record, '$.id') from gtmcli.gtmcli_rejected")}
    enriched = {row[0]: row[1:] for row in rows if row[0] not in rejected}
    assert rejected and enriched
    assert all(status and provider and job_id for status, provider, job_id in enriched.values())
    # A contact with a well-formed email is always sent, so always enriched.
    good = {c["id"] for c in contacts if "@" in c["email"] and c["email"].strip().count("@") == 1
            and not c["email"].strip().startswith("@") and not c["email"].strip().endswith("@")}
    assert good <= set(enriched)
    submissions = duckdb_query(warehouse, "select job_id, item_count from gtmcli.gtmcli_submissions")
    assert {job_id for *_, job_id in enriched.values()} == {row[0] for row in submissions}


def start_jobs_once_waiting(sandbox: SandboxProcess, waiting: threading.Event) -> None:
    """Push the sandbox clock an hour on once the run says it waits (or after a minute
    without it, so that a tap that does not wait fails the test, not hangs it)."""
    waiting.wait(timeout=60)
    requests.post(f"{sandbox.url}/_sandbox/clock", json={"advance": 3600}, timeout=30,
                  headers={"Authorization": f"Bearer {sandbox.api_key}"}).raise_for_status()


def test_validate_and_collect_lands_the_results_of_its_own_submission_in_one_run(
    pipelines: Pipelines, duckdb_query: Callable[[Path, str], list[list[Any]]],
) -> None:
    warehouse = pipelines.workdir / "duckdb-collect.duckdb"
    # A sandbox of its own whose jobs start only when its clock is pushed an hour on:
    # that happens once tap-gtmcli logs that it waits, so it surely found the job open.
    sandbox = SandboxProcess(pipelines.workdir / "collect-sandbox.db",
                             pipelines.workdir / "logs" / "collect-sandbox.log",
                             api_key=API_KEY,  # the key the e2e plugins are given
                             extra_args=("--start-delay", "3600", "--processing-rate", "1000"))
    url = sandbox.start()
    waiting = threading.Event()
    starter = threading.Thread(target=start_jobs_once_waiting, args=(sandbox, waiting),
                               daemon=True)

    def on_progress(line: str) -> None:
        # Read from the run's output as it is printed (the log file is written in blocks).
        if "waiting up to" in line:
            waiting.set()

    try:
        starter.start()
        # A state of its own too, so the contacts are submitted whatever ran before.
        run = pipelines.run(
            "--state-id-suffix", "collect", "gtmcli-validate-and-collect",
            log_name="validate-and-collect", on_progress=on_progress,
            env={"TARGET_DUCKDB_FILEPATH": str(warehouse), "TAP_GTMCLI_API_URL": url,
                 "MAPPER_GTMCLI_API_URL": url},
        )
        starter.join()
        (job,) = sandbox.jobs()
        items = sandbox.get(f"/_sandbox/jobs/{job['id']}/items")["items"]
    finally:
        sandbox.stop()

    log = run.log_path.read_text()
    assert_no_key(log)  # the key these plugins were given, nor its tail
    assert "waiting up to 600 s for 1 job" in log
    assert re.search(r"stopped waiting after [\d.]+ s and \d+ checks?: 1 finished, 0 still open",
                     log)
    assert job["type"] == "validate" and job["status"] == "completed"
    with CSV_PATH.open(encoding="utf-8") as handle:
        contact_emails = {row["email"].strip().lower() for row in csv.DictReader(handle)}
    assert len(items) == job["total"] > 1000
    assert {item["email"] for item in items} <= contact_emails
    assert duckdb_query(warehouse, "select id, status, total from gtmcli.jobs") == [
        [job["id"], "completed", job["total"]],
    ]
    # Every submitted contact's result, item k in row k, each once.
    rows = duckdb_query(warehouse, "select job_id, row_number, email from gtmcli.job_results "
                                   "order by row_number")
    assert rows == [[job["id"], n, item["email"]] for n, item in enumerate(items, start=1)]
    assert_no_key(duckdb_query(warehouse, "select * from gtmcli.job_results"),
                  duckdb_query(warehouse, "select * from gtmcli.jobs"))
    state = pipelines.state("dev:tap-gtmcli-to-target-duckdb:collect")
    assert state["singer_state"]["bookmarks"]["jobs"]["open_jobs"] == {}
