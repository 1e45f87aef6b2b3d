"""`meltano run tap-gtmcli pipelinewise-target-postgres` into a real PostgreSQL.

pipelinewise-family loaders flush a stream to the database on every SCHEMA message.
The tap sends one SCHEMA per stream per run, so each table is loaded in one flush, not
one per job (issue 23: 200 jobs x 50 rows took 33 s against target-jsonl's 9.9 s).
The loader's own log line per flush ("Loading N rows into ...") counts them.
"""

from __future__ import annotations

import re

import pytest
import requests

from tap_gtmcli.demo.meltano_project import MeltanoRun
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.meltano import NOTHING_NEW, Pipelines
from tests.helpers.postgres import PostgresServer
from tests.helpers.warehouse import assert_warehouse_holds_exactly

pytestmark = pytest.mark.e2e

SCHEMA = "gtmcli_pipelinewise"
#: pipelinewise-target-postgres' line for each flush of a stream.
FLUSH = re.compile(r"Loading (\d+) rows into '\"?gtmcli_pipelinewise\"?\.\"?(\w+)\"?'")


def flushes(run: MeltanoRun) -> dict[str, list[int]]:
    """Rows of each flush the loader logged, by table."""
    found: dict[str, list[int]] = {}
    for rows, table in FLUSH.findall(run.log_path.read_text()):
        found.setdefault(table, []).append(int(rows))
    return found


def test_pipelinewise_target_postgres_loads_each_stream_in_one_flush_exactly(
    pipelines: Pipelines, submitted: MeltanoRun, postgres_server: PostgresServer,
) -> None:
    # Trust authentication ignores the password, but the loader refuses to start without.
    env = {"PIPELINEWISE_TARGET_POSTGRES_PORT": str(postgres_server.port),
           "PIPELINEWISE_TARGET_POSTGRES_PASSWORD": "unused-with-trust-auth",
           "PIPELINEWISE_TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": SCHEMA}
    # Several jobs whatever ran before, so that a SCHEMA per job would show.
    seeded = requests.post(f"{pipelines.sandbox.url}/_sandbox/seed", timeout=30,
                           headers={"Authorization": f"Bearer {API_KEY}"},
                           json={"type": "find", "count": 40, "jobs": 3, "seed": "pipelinewise"})
    seeded.raise_for_status()
    jobs, result_rows = pipelines.sandbox_truth()
    assert len(jobs) >= 4

    first = pipelines.run("tap-gtmcli", "pipelinewise-target-postgres",
                          log_name="pipelinewise-1", env=env)
    assert flushes(first) == {"jobs": [len(jobs)], "job_results": [result_rows]}
    assert_warehouse_holds_exactly(postgres_server.query, jobs, schema=SCHEMA,
                                   warehouse="pipelinewise-target-postgres' schema")

    second = pipelines.run("tap-gtmcli", "pipelinewise-target-postgres",
                           log_name="pipelinewise-2", env=env)
    assert NOTHING_NEW in second.log_path.read_text()
    assert flushes(second) == {}
    assert_warehouse_holds_exactly(postgres_server.query, jobs, schema=SCHEMA,
                                   warehouse="pipelinewise-target-postgres' schema, again")
    assert_no_key(postgres_server.query(f"select row_to_json(r) from {SCHEMA}.jobs r"),
                  postgres_server.query(f"select row_to_json(r) from {SCHEMA}.job_results r"))
