"""What a warehouse must hold once a sandbox's jobs are extracted into it, checked
through any SQL connection (DuckDB, PostgreSQL, whichever loader wrote the tables).

Exactly the sandbox: every job once, with its status; every result row of a job once,
a completed job's `total` rows and a failed job's `completed` (the rows it processed,
charged and extracted). A difference is reported per job, by id, with its counts.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: SQL in, rows out: `functools.partial(duckdb_query, path)`, `postgres_server.query`.
Query = Callable[[str], Sequence[Sequence[Any]]]


def expected_result_rows(jobs: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Result rows per job that has any: what the warehouse must hold, exactly. A
    completed job has `total` rows; a failed one the `completed` rows it processed
    (they were charged, and the tap extracts them)."""
    rows = {job_id: int(job["total"] if job["status"] == "completed" else job["completed"])
            for job_id, job in jobs.items() if job["status"] in ("completed", "failed")}
    return {job_id: count for job_id, count in rows.items() if count}


def assert_warehouse_holds_exactly(
    query: Query, jobs: Mapping[str, Mapping[str, Any]], *, schema: str = "gtmcli",
    jobs_table: str = "jobs", results_table: str = "job_results", warehouse: str = "",
) -> None:
    """The warehouse holds exactly the sandbox's `jobs` (by id, as the API lists them).

    In `{schema}.{jobs_table}`: one row per sandbox job and no other (count and distinct
    ids both equal the jobs'), each with the sandbox's status. In
    `{schema}.{results_table}`: per job, as many rows and as many distinct `row_number`s
    as `expected_result_rows`, no rows of any other job; in all, as many rows and
    distinct (job_id, row_number) pairs as the sandbox's rows. Counts may come back as
    text (psql) or numbers (DuckDB). `warehouse` names it in the failure message.
    """
    jobs_at, results_at = f"{schema}.{jobs_table}", f"{schema}.{results_table}"
    expected = expected_result_rows(jobs)
    problems = _job_problems(query(f"select id, status from {jobs_at}"), jobs, jobs_at)
    per_job = {job_id: (int(rows), int(distinct)) for job_id, rows, distinct in query(
        f"select job_id, count(*), count(distinct row_number) from {results_at} group by 1")}
    for job_id in sorted(set(per_job) | set(expected), key=str):
        rows, distinct = per_job.get(job_id, (0, 0))
        wanted = expected.get(job_id, 0)
        if (rows, distinct) != (wanted, wanted):
            whose = "" if job_id in jobs else " (not a sandbox job)"
            problems.append(f"{results_at}: job {job_id}{whose}: {rows} rows, {distinct} "
                            f"distinct row_number, sandbox has {wanted}")
    ((total, pairs),) = query(
        f"select count(*), (select count(*) from (select distinct job_id, row_number "
        f"from {results_at}) as pairs) from {results_at}")
    wanted_total = sum(expected.values())
    if (int(total), int(pairs)) != (wanted_total, wanted_total):
        problems.append(f"{results_at}: {total} rows, {pairs} distinct (job_id, row_number), "
                        f"sandbox has {wanted_total}")
    assert not problems, (
        f"{warehouse or 'the warehouse'} differs from the sandbox ({len(jobs)} jobs, "
        f"{wanted_total} result rows):\n" + "\n".join(problems))


def _job_problems(
    loaded: Sequence[Sequence[Any]], jobs: Mapping[str, Mapping[str, Any]], jobs_at: str,
) -> list[str]:
    """What the loaded (id, status) rows get wrong: jobs missing, foreign, loaded twice,
    or of another status."""
    times = Counter(job_id for job_id, _ in loaded)
    statuses: dict[Any, set[Any]] = defaultdict(set)
    for job_id, status in loaded:
        statuses[job_id].add(status)
    problems = []
    if len(loaded) != len(jobs) or len(times) != len(jobs):
        problems.append(f"{jobs_at}: {len(loaded)} rows, {len(times)} distinct ids, "
                        f"sandbox has {len(jobs)} jobs")
    missing = sorted(set(jobs) - set(times))
    if missing:
        problems.append(f"{jobs_at}: missing {len(missing)} sandbox jobs: {missing}")
    foreign = sorted(set(times) - set(jobs), key=str)
    if foreign:
        problems.append(f"{jobs_at}: {len(foreign)} jobs not in the sandbox: {foreign}")
    for job_id in sorted(set(times), key=str):
        if times[job_id] > 1:
            problems.append(f"{jobs_at}: job {job_id} loaded {times[job_id]} times")
        if job_id in jobs and statuses[job_id] != {jobs[job_id]["status"]}:
            loaded_statuses = sorted(statuses[job_id], key=str)
            problems.append(f"{jobs_at}: job {job_id} has status {loaded_statuses}, "
                            f"sandbox has {jobs[job_id]['status']!r}")
    return problems


def duckdb_rows(python: Path, path: Path, sql: str) -> list[list[Any]]:
    """Rows of SQL on a DuckDB file, run by `python` (target-duckdb's, whose duckdb wrote
    the file: another version may not read it)."""
    script = (
        "import duckdb, json, sys\n"
        "rows = duckdb.connect(sys.argv[1], read_only=True).execute(sys.argv[2]).fetchall()\n"
        "print(json.dumps([list(row) for row in rows], default=str))\n"
    )
    result = subprocess.run([str(python), "-c", script, str(path), sql],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)
