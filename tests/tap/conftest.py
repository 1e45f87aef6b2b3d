"""Fixtures of the tap tests (the runner is tests/helpers/tap_runs.py; `sandbox` is the
session-wide one of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tap_gtmcli.sandbox import SandboxServer
from tests.helpers.sandboxes import slow_sandbox_server
from tests.helpers.tap_runs import tap_settings


@pytest.fixture
def tap_config(sandbox: SandboxServer) -> dict[str, Any]:
    """The tap's config for `sandbox`."""
    return tap_settings(sandbox)


@pytest.fixture
def slow_sandbox() -> Iterator[SandboxServer]:
    """A sandbox of this test's own whose jobs start only when the test moves the clock
    (`start_jobs`), then process at `RATE` items a second (tests/helpers/sandboxes.py)."""
    with slow_sandbox_server() as server:
        yield server
