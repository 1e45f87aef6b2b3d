"""Every test starts with an empty submission index of its own.

The mapper and the target keep a submission index by default (README "What you pay
for"): without this, tests would write into the user's data directory and skip items an
earlier test submitted. Console scripts started with a copy of the environment taken at
import time share one index for the session, still apart from the user's.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_DATA_HOME = tempfile.mkdtemp(prefix="gtmcli-tests-data-")
atexit.register(shutil.rmtree, _SESSION_DATA_HOME, ignore_errors=True)
os.environ["XDG_DATA_HOME"] = _SESSION_DATA_HOME
os.environ.pop("MELTANO_PROJECT_ROOT", None)


@pytest.fixture(autouse=True)
def _own_submission_index(tmp_path_factory: pytest.TempPathFactory,
                          monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data directory, so the default index of an in-process run is the test's own."""
    data_home = tmp_path_factory.mktemp("data-home")
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    return data_home
