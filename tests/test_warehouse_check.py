"""The warehouse check the e2e and orchestration tests share (tests/helpers/warehouse.py)
fails on each way a warehouse can differ from the sandbox, naming the job and counts.

On SQLite in memory (schema `gtmcli` attached), so that each difference costs nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.warehouse import assert_warehouse_holds_exactly, expected_result_rows

#: A completed job of 3 rows, a failed one that processed 2 of 5, a completed empty one,
#: a failed one that processed none, and one still running.
JOBS = {
    "job-a": {"status": "completed", "total": 3, "completed": 3},
    "job-b": {"status": "failed", "total": 5, "completed": 2},
    "job-c": {"status": "completed", "total": 0, "completed": 0},
    "job-d": {"status": "failed", "total": 4, "completed": 0},
    "job-e": {"status": "processing", "total": 6, "completed": 1},
}


@pytest.fixture
def warehouse() -> Iterator[sqlite3.Connection]:
    """The exact warehouse of JOBS."""
    connection = sqlite3.connect(":memory:")
    connection.execute("attach ':memory:' as gtmcli")
    connection.execute("create table gtmcli.jobs (id text, status text)")
    connection.execute("create table gtmcli.job_results (job_id text, row_number integer)")
    connection.executemany("insert into gtmcli.jobs values (?, ?)",
                           [(job_id, job["status"]) for job_id, job in JOBS.items()])
    connection.executemany("insert into gtmcli.job_results values (?, ?)", [
        (job_id, number) for job_id, rows in expected_result_rows(JOBS).items()
        for number in range(1, rows + 1)])
    yield connection
    connection.close()


def failure(connection: sqlite3.Connection, *changes: str) -> str:
    """The check's failure message once `changes` (SQL) are made to the exact warehouse."""
    for change in changes:
        connection.execute(change)

    def query(sql: str) -> list[tuple[Any, ...]]:
        return connection.execute(sql).fetchall()

    with pytest.raises(AssertionError) as raised:
        assert_warehouse_holds_exactly(query, JOBS, warehouse="SQLite")
    return str(raised.value)


def test_the_truth_is_a_completed_jobs_total_and_a_failed_jobs_processed_rows() -> None:
    assert expected_result_rows(JOBS) == {"job-a": 3, "job-b": 2}


def test_the_exact_warehouse_passes(warehouse: sqlite3.Connection) -> None:
    assert_warehouse_holds_exactly(lambda sql: warehouse.execute(sql).fetchall(), JOBS)


def test_a_missing_job_a_foreign_one_and_another_status_are_named(
    warehouse: sqlite3.Connection,
) -> None:
    message = failure(warehouse, "delete from gtmcli.jobs where id = 'job-c'",
                      "insert into gtmcli.jobs values ('job-x', 'completed')",
                      "update gtmcli.jobs set status = 'completed' where id = 'job-e'")
    assert message.startswith("SQLite differs from the sandbox (5 jobs, 5 result rows):")
    assert "gtmcli.jobs: missing 1 sandbox jobs: ['job-c']" in message
    assert "gtmcli.jobs: 1 jobs not in the sandbox: ['job-x']" in message
    assert "gtmcli.jobs: job job-e has status ['completed'], sandbox has 'processing'" in message


def test_a_job_loaded_twice_is_named_though_its_ids_and_statuses_match(
    warehouse: sqlite3.Connection,
) -> None:
    message = failure(warehouse, "insert into gtmcli.jobs values ('job-a', 'completed')")
    assert "gtmcli.jobs: 6 rows, 5 distinct ids, sandbox has 5 jobs" in message
    assert "gtmcli.jobs: job job-a loaded 2 times" in message
    assert "job_results" not in message


def test_a_missing_row_is_named_by_job_and_in_the_totals(warehouse: sqlite3.Connection) -> None:
    message = failure(warehouse, "delete from gtmcli.job_results "
                                 "where job_id = 'job-b' and row_number = 2")
    assert message.splitlines()[1:] == [
        "gtmcli.job_results: job job-b: 1 rows, 1 distinct row_number, sandbox has 2",
        "gtmcli.job_results: 4 rows, 4 distinct (job_id, row_number), sandbox has 5",
    ]


def test_a_row_twice_is_named_though_each_job_has_its_distinct_rows(
    warehouse: sqlite3.Connection,
) -> None:
    message = failure(warehouse, "insert into gtmcli.job_results values ('job-a', 1)")
    assert message.splitlines()[1:] == [
        "gtmcli.job_results: job job-a: 4 rows, 3 distinct row_number, sandbox has 3",
        "gtmcli.job_results: 6 rows, 5 distinct (job_id, row_number), sandbox has 5",
    ]


def test_rows_of_a_job_with_none_due_are_named(warehouse: sqlite3.Connection) -> None:
    message = failure(warehouse, "insert into gtmcli.job_results values ('job-e', 1)",
                      "insert into gtmcli.job_results values ('job-z', 1)")
    assert "gtmcli.job_results: job job-e: 1 rows, 1 distinct row_number, sandbox has 0" in (
        message)
    assert ("gtmcli.job_results: job job-z (not a sandbox job): 1 rows, 1 distinct "
            "row_number, sandbox has 0") in message


def test_text_counts_as_psql_returns_them_compare_as_numbers(
    warehouse: sqlite3.Connection,
) -> None:
    def as_psql(sql: str) -> list[list[str]]:
        return [["" if value is None else str(value) for value in row]
                for row in warehouse.execute(sql).fetchall()]

    assert_warehouse_holds_exactly(as_psql, JOBS)
    warehouse.execute("delete from gtmcli.job_results where job_id = 'job-a'")
    with pytest.raises(AssertionError, match="job job-a: 0 rows, 0 distinct row_number, "
                                             "sandbox has 3"):
        assert_warehouse_holds_exactly(as_psql, JOBS)


def test_another_schema_and_tables_are_queried_by_name(warehouse: sqlite3.Connection) -> None:
    warehouse.execute("attach ':memory:' as loader_schema")
    warehouse.execute("create table loader_schema.all_jobs as select * from gtmcli.jobs")
    warehouse.execute("create table loader_schema.rows as select * from gtmcli.job_results")
    assert_warehouse_holds_exactly(lambda sql: warehouse.execute(sql).fetchall(), JOBS,
                                   schema="loader_schema", jobs_table="all_jobs",
                                   results_table="rows")
    warehouse.execute("delete from loader_schema.rows where job_id = 'job-b'")
    with pytest.raises(AssertionError, match=r"loader_schema\.rows: job job-b: 0 rows"):
        assert_warehouse_holds_exactly(lambda sql: warehouse.execute(sql).fetchall(), JOBS,
                                       schema="loader_schema", jobs_table="all_jobs",
                                       results_table="rows")
