"""Session-wide test rules.

- Every plugin run is scanned for the API key (tests/helpers/key_scan.py).
- `sandbox`: the fast, fault-free sandbox most tests talk to, on 127.0.0.1.
- Every test starts with an empty default submission index, apart from the user's. The
  mapper and the target keep a submission index by default (README "What you pay for"):
  without this, tests would write into the user's data directory and skip items an
  earlier test submitted. Each test gets a data directory of its own (console scripts
  the helpers start inherit it); the session's, which a process started with a copy of
  the environment taken earlier would use, is emptied before each test.
- The suite runs in two pytest-xdist workers (`-n 2 --dist loadgroup`, pyproject.toml):
  it mostly waits on subprocesses and sandboxes. Each worker is a process with its own
  session fixtures (data directory, key scan, sandboxes). The tests that run Meltano
  (e2e and Dagster) run in one worker, one after another (MELTANO_TESTS below); Meltano
  and its plugins are installed under a lock all the same (tests/e2e `installing`).
  Figures a test measured go through `print_figures`, which shows them whichever worker
  ran the test.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.sandbox import SandboxServer
from tests.helpers import key_scan
from tests.helpers.meltano import MELTANO_OWN_FILES
from tests.helpers.sandboxes import fast_sandbox

key_scan.install()

_SESSION_DATA_HOME = tempfile.mkdtemp(prefix="gtmcli-tests-data-")
atexit.register(shutil.rmtree, _SESSION_DATA_HOME, ignore_errors=True)
os.environ["XDG_DATA_HOME"] = _SESSION_DATA_HOME
os.environ.pop("MELTANO_PROJECT_ROOT", None)


#: Tests that run in one worker, one after another, in file order: every test that runs
#: Meltano (tests/e2e, tests/orchestration). Concurrent Meltano runs of one plugin in one
#: project share `.meltano/run/<plugin>/` (the catalog, state and config files each run
#: writes and its plugin reads, the config with the key); one worker also keeps one
#: sandbox with its submitted contacts, one PostgreSQL server, one migrated system database.
MELTANO_TESTS = ("tests/e2e/", "tests/orchestration/")
#: Meltano tests with a project of their own (a fresh `meltano init` in a temporary
#: directory): they share nothing with the others and run in whichever worker is free.
OWN_PROJECT_TESTS = ("tests/e2e/test_own_project.py",)


#: Tests that cost seconds each (node id prefixes): kill-and-restart trials, soaks and
#: the reliability matrix (every fault reruns the plugins), real-time waits, 100,000-item
#: runs, and the files that start the console scripts over and over. `make test-fast`
#: leaves them out, `make test` runs them.
SLOW_TESTS = (
    "tests/reliability/",
    "tests/tap/test_kill_and_resume.py",
    "tests/tap/test_wait_for_jobs.py",
    "tests/tap/test_incremental.py",
    "tests/tap/test_batch_mode.py",
    "tests/tap/test_cli.py",
    "tests/tap/test_parallel.py::test_the_shared_gate_keeps_growth_tier_429s_to_a_handful",
    "tests/test_plugin_hygiene.py",
    "tests/test_key_scan.py::test_a_child_inheriting_the_tests_stdout_is_scanned",
    "tests/tap/test_errors.py::test_key_never_appears_in_any_output_of_failing_syncs",
    "tests/mapper/test_mapper_sandbox.py::test_the_api_key_never_appears_in_any_output",
    "tests/mapper/test_mapper_sandbox.py::test_402_mid_run_stops_before_the_state_of_",
    "tests/mapper/test_mapper_sandbox.py::test_ambiguous_create_yields_exactly_one_job_",
    "tests/mapper/test_target.py::test_a_failed_create_always_exits_non_zero",
    "tests/sandbox/test_sandbox_processing.py::test_a_restart_mid_computation_",
    "tests/sandbox/test_sandbox_processing.py::test_a_100000_item_create_",
    "tests/sandbox/test_sandbox_processing.py::test_progress_never_exceeds_",
    "tests/sandbox/test_sandbox_admin.py::test_seeding_100000_items_is_fast",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark by where a test lives, so that no file can forget the mark: `e2e`, every test
    that runs Meltano or PostgreSQL; `slow`, SLOW_TESTS (`make test-fast` skips both)."""
    for item in items:
        if item.nodeid.startswith(MELTANO_TESTS):
            item.add_marker(pytest.mark.e2e)
        if item.nodeid.startswith(SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before pytest-xdist's own
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup`, with MELTANO_TESTS as one group.

    By path, in the controller: pytest-xdist 3.8 reads `xdist_group` marks by rewriting
    node ids, which pytest 9.2 no longer honours (pytest-xdist issue 1386).
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class MeltanoInOneWorker(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(MELTANO_TESTS) and not nodeid.startswith(OWN_PROJECT_TESTS):
                return "meltano"
            return str(super()._split_scope(nodeid))

    return MeltanoInOneWorker(config, log)


#: The user property that carries a test's figures to the controller process.
FIGURES = "figures"
_figures: list[str] = []


@pytest.fixture
def print_figures(record_property: Callable[[str, object], None]) -> Callable[[str], None]:
    """Shows a line of figures a test measured in the suite's output, after the test
    summary, whichever worker ran it (a worker's own prints never reach the terminal)."""
    return lambda line: record_property(FIGURES, line)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _figures.extend(f"{report.nodeid}: {value}" for name, value in report.user_properties
                        if name == FIGURES)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _figures:
        terminalreporter.write_sep("=", "figures measured by tests")
        for line in _figures:
            terminalreporter.write_line(line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """What the test printed, and what children that inherit its stdout / stderr printed
    (pytest captures both), goes to the key scan before the check after the test."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when in ("setup", "call"):
        key_scan.record(f"output captured during {report.when} of the test",
                        report.capstdout + report.capstderr)


@pytest.fixture(autouse=True)
def _api_key_in_no_output() -> Iterator[None]:
    """Fail the test if the API key appeared in anything printed or logged since the last
    scan: its own runs, and runs of the session fixtures it set up first."""
    yield
    try:
        key_scan.assert_clean()
    finally:
        key_scan.reset()


@pytest.fixture(autouse=True)
def _meltano_own_files_in_the_key_scan(request: pytest.FixtureRequest) -> Iterator[None]:
    """For a test that runs Meltano, the files Meltano wrote while it ran are scanned.

    Only then: the other worker's tests would find the config of a Meltano run still in
    flight (its tests run one after another in one worker, see MELTANO_TESTS).
    """
    nodeid = request.node.nodeid
    if not nodeid.startswith(MELTANO_TESTS) or nodeid.startswith(OWN_PROJECT_TESTS):
        yield  # (a test with a project of its own scans that project's files itself)
        return
    started = time.time()
    for directory in MELTANO_OWN_FILES:
        key_scan.watch_tree(directory, since=started)
    try:
        yield
        key_scan.assert_clean()
    finally:
        for directory in MELTANO_OWN_FILES:
            key_scan.unwatch_tree(directory)


@pytest.fixture(scope="session", autouse=True)
def _api_key_in_no_late_output() -> Iterator[None]:
    """What session fixtures print while they tear down is scanned too."""
    yield
    key_scan.assert_clean()


@pytest.fixture(autouse=True)
def _own_submission_index(tmp_path_factory: pytest.TempPathFactory,
                          monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data directory for in-process runs; the session's one emptied."""
    shutil.rmtree(Path(_SESSION_DATA_HOME, "gtmcli"), ignore_errors=True)
    data_home = tmp_path_factory.mktemp("data-home")
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    return data_home


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """A fast, fault-free sandbox on 127.0.0.1: it takes `API_KEY` (tests/helpers/keys.py)
    and its jobs complete the moment they are created."""
    with fast_sandbox() as server:
        yield server
