"""Session-wide test rules.

- Every plugin run is scanned for the API key (tests/key_scan.py).
- Every test starts with an empty default submission index, apart from the user's. The
  mapper and the target keep a submission index by default (README "What you pay for"):
  without this, tests would write into the user's data directory and skip items an
  earlier test submitted. In-process runs get a data directory of their own per test;
  console scripts started with a copy of the environment taken at import time share the
  session's, which is emptied before each test.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import key_scan

key_scan.install()

_SESSION_DATA_HOME = tempfile.mkdtemp(prefix="gtmcli-tests-data-")
atexit.register(shutil.rmtree, _SESSION_DATA_HOME, ignore_errors=True)
os.environ["XDG_DATA_HOME"] = _SESSION_DATA_HOME
os.environ.pop("MELTANO_PROJECT_ROOT", None)


@pytest.fixture(autouse=True)
def _api_key_in_no_output() -> Iterator[None]:
    """Fail the test if the API key appeared in anything printed or logged since the last
    scan: its own runs, and runs of the session fixtures it set up first."""
    yield
    try:
        key_scan.assert_clean()
    finally:
        key_scan.reset()


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
