"""Two GTMCLI accounts in one Dagster run, in parallel; and Meltano's run guard.

The accounts' job runs through `dagster job execute` (the multiprocess executor, as a
deployment runs it), each account against its own sandbox with its own key, into its
own schema of one PostgreSQL warehouse, with state in the shared system database.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from tap_gtmcli.demo.meltano_project import MeltanoProject
from tap_gtmcli.orchestration.definitions import build_definitions
from tap_gtmcli.orchestration.jobs import SKIPPED_TAG
from tap_gtmcli.sandbox import SandboxServer
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.orchestration import (
    ACCOUNT_B_KEY,
    DAGSTER,
    child_environment,
    jobs_bookmark,
    jobs_by_id,
    meltano_runs,
    settled_jobs_bookmark,
    stored_state,
    wait_for,
)
from tests.helpers.postgres import POSTGRES_BIN, PostgresServer
from tests.helpers.sandboxes import fast_sandbox
from tests.helpers.warehouse import assert_warehouse_holds_exactly

pytestmark = pytest.mark.e2e

ACCOUNTS_JOB = "gtmcli_extract_accounts"
STATE_ID = {"a": "dev:tap-gtmcli-account-a-to-target-postgres-per-account",
            "b": "dev:tap-gtmcli-account-b-to-target-postgres-per-account"}
SCHEMA = {"a": "gtmcli_account_a", "b": "gtmcli_account_b"}
KEY = {"a": API_KEY, "b": ACCOUNT_B_KEY}
RUN_TIMEOUT_SECONDS = 300
#: How long the test waits for a lock to be held, or waited on.
LOCK_SECONDS = 120


@dataclass
class AccountsRun:
    """The sandboxes of both accounts and what the Dagster run left behind."""

    sandboxes: dict[str, SandboxServer]
    environment: dict[str, str]
    completed: subprocess.CompletedProcess[str]
    instance_dir: Path


def account_environment(sandboxes: dict[str, SandboxServer]) -> dict[str, str]:
    """Each account's URL and key, in the variables Meltano reads for its extractor."""
    return {
        f"TAP_GTMCLI_ACCOUNT_{account.upper()}_{setting}": value
        for account, server in sandboxes.items()
        for setting, value in (("API_URL", server.url), ("API_KEY", KEY[account]))
    }


@pytest.fixture(scope="module")
def accounts_run(
    meltano_project: MeltanoProject, worker_environment: dict[str, str],
    orchestration_dir: Path,
) -> Iterator[AccountsRun]:
    """`dagster job execute` of the accounts' job, once, against two seeded sandboxes."""
    sandboxes = {account: fast_sandbox(api_key=KEY[account]).start() for account in KEY}
    try:
        sandboxes["a"].seed_jobs("validate", 300, jobs=2, seed="account-a")
        sandboxes["a"].seed_jobs("find", 40, seed="account-a")
        sandboxes["b"].seed_jobs("validate", 170, seed="account-b")
        sandboxes["b"].seed_jobs("find", 9, status="failed", seed="account-b")
        instance_dir = orchestration_dir / "dagster-home"
        instance_dir.mkdir()
        (instance_dir / "dagster.yaml").write_text("")
        config = orchestration_dir / "run-config.yaml"
        # Explicit, so the two accounts overlap even on a one-core machine.
        config.write_text(json.dumps({"execution": {"config": {"max_concurrent": 2}}}))
        environment = {**worker_environment, **account_environment(sandboxes)}
        completed = subprocess.run(
            [DAGSTER, "job", "execute", "-m", "tap_gtmcli.orchestration.definitions", "-j", ACCOUNTS_JOB,
             "-c", str(config)],
            env=child_environment({**environment, "DAGSTER_HOME": str(instance_dir)}),
            capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, check=False,
        )
        yield AccountsRun(sandboxes, environment, completed, instance_dir)
    finally:
        for server in sandboxes.values():
            server.stop()


def assert_schema_holds_exactly(
    postgres_server: PostgresServer, account: str, server: SandboxServer
) -> None:
    """The account's schema holds its sandbox's jobs and result rows, once each."""
    jobs = jobs_by_id(server, KEY[account])
    assert_warehouse_holds_exactly(postgres_server.query, jobs, schema=SCHEMA[account],
                                   warehouse=f"account {account}'s schema")


def test_two_accounts_run_in_parallel_each_landing_its_own_rows(
    accounts_run: AccountsRun, postgres_server: PostgresServer,
):
    completed = accounts_run.completed
    assert completed.returncode == 0, completed.stderr[-3000:]
    for account, server in accounts_run.sandboxes.items():
        assert_schema_holds_exactly(postgres_server, account, server)
        state = stored_state(postgres_server, STATE_ID[account])
        assert jobs_bookmark(state) == settled_jobs_bookmark(jobs_by_id(server, KEY[account]))

    # Parallel: both Meltano runs were under way at once, in separate step processes.
    (_, start_a, end_a), = meltano_runs(postgres_server, STATE_ID["a"])
    (_, start_b, end_b), = meltano_runs(postgres_server, STATE_ID["b"])
    assert max(float(start_a), float(start_b)) < min(float(end_a), float(end_b))
    instance = dg.DagsterInstance.from_config(str(accounts_run.instance_dir))
    (run,) = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.SUCCESS
    events = instance.all_logs(run.run_id)
    step_pids = {event.step_key: event.dagster_event.pid for event in events
                 if event.dagster_event and event.dagster_event.event_type_value == "STEP_START"}
    assert len(step_pids) == 2
    assert len(set(step_pids.values())) == 2

    stored = [path.read_bytes().decode(errors="replace")
              for path in accounts_run.instance_dir.rglob("*") if path.is_file()]
    assert_no_key(completed.stdout, completed.stderr, *stored,
                  *(str(event) for event in events),
                  *(stored_state(postgres_server, state_id) for state_id in STATE_ID.values()))


class TableLock:
    """A psql session holding an exclusive lock on a table until released."""

    def __init__(self, postgres_server: PostgresServer, table: str) -> None:
        self.process = subprocess.Popen(
            [str(POSTGRES_BIN / "psql"), "-h", "127.0.0.1", "-p", str(postgres_server.port),
             "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdin is not None
        self.process.stdin.write(f"begin;\nlock table {table} in access exclusive mode;\n")
        self.process.stdin.flush()

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("commit;\n")
        self.process.stdin.close()
        self.process.wait(timeout=30)


def test_a_run_refused_by_meltano_is_skipped_not_failed_and_no_state_is_lost(
    accounts_run: AccountsRun, postgres_server: PostgresServer,
    meltano_project: MeltanoProject, in_worker: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
):
    assert accounts_run.completed.returncode == 0, accounts_run.completed.stderr[-3000:]
    sandbox_a = accounts_run.sandboxes["a"]
    sandbox_a.seed_jobs("validate", 210, jobs=2, seed="account-a-later")
    state_before = stored_state(postgres_server, STATE_ID["a"])
    rows_b_before = postgres_server.query("select count(*) from gtmcli_account_b.job_results")

    # Run 1 (another worker) holds its place: its loader waits on a table the test locks,
    # so it stays in flight, deterministically, until the test lets it go.
    lock = TableLock(postgres_server, "gtmcli_account_a.jobs")
    wait_for("the test to hold the lock", lambda: postgres_server.query(
        "select count(*) from pg_locks where mode = 'AccessExclusiveLock' and granted "
        "and relation = 'gtmcli_account_a.jobs'::regclass")[0][0] == "1", LOCK_SECONDS)
    first = subprocess.Popen(
        [str(meltano_project.executable), "run", "tap-gtmcli-account-a",
         "target-postgres-per-account"],
        cwd=meltano_project.root, env=child_environment(accounts_run.environment),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for("run 1 to wait on the lock", lambda: postgres_server.query(
            "select count(*) from pg_locks where not granted")[0][0] != "0", LOCK_SECONDS)
        assert [row[0] for row in meltano_runs(postgres_server, STATE_ID["a"])] == [
            "SUCCESS", "RUNNING"]

        # Run 2: the same task through Dagster, while run 1 is in flight.
        for name, value in accounts_run.environment.items():
            in_worker.setenv(name, value)
        job = build_definitions().get_job_def(ACCOUNTS_JOB)
        with dg.instance_for_test() as instance:
            second = job.execute_in_process(
                instance=instance, raise_on_error=False,
                op_selection=["task_1__tap_gtmcli_account_a__target_postgres_per_account"])
            logs = "\n".join(str(entry) for entry in instance.all_logs(second.run_id))
            run_tags = instance.get_run_by_id(second.run_id).tags
        # Skipped, not failed: no failure alert for what is only an overlap.
        assert second.success, logs[-3000:]
        (output,) = [event.event_specific_data for event in second.all_events
                     if event.event_type_value == "STEP_OUTPUT"]
        assert output.metadata["outcome"].value == "skipped"
        failure = output.metadata["reason"].value
        assert failure.startswith(
            f"Another '{STATE_ID['a']}' pipeline is already running which started at 20")
        assert run_tags[SKIPPED_TAG] == failure
        assert f"skipped: {failure}" in logs
        # Refused before it started: no run recorded, the state untouched.
        assert [row[0] for row in meltano_runs(postgres_server, STATE_ID["a"])] == [
            "SUCCESS", "RUNNING"]
        assert stored_state(postgres_server, STATE_ID["a"]) == state_before
    finally:
        lock.release()
        first_output, _ = first.communicate(timeout=RUN_TIMEOUT_SECONDS)
    printed = capfd.readouterr()

    assert first.returncode == 0, first_output[-3000:]
    assert [row[0] for row in meltano_runs(postgres_server, STATE_ID["a"])] == [
        "SUCCESS", "SUCCESS"]
    assert_schema_holds_exactly(postgres_server, "a", sandbox_a)
    state_after = stored_state(postgres_server, STATE_ID["a"])
    assert state_after != state_before
    assert jobs_bookmark(state_after) == settled_jobs_bookmark(jobs_by_id(sandbox_a, API_KEY))
    assert postgres_server.query("select count(*) from gtmcli_account_b.job_results") == (
        rows_b_before)
    assert_no_key(first_output, logs, failure, printed.out, printed.err, state_after)
