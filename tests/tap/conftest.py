"""Fixtures of the tap tests (the runner is tests/helpers/tap_runs.py; `sandbox` is the
session-wide one of tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tap_gtmcli.sandbox import SandboxServer
from tests.helpers.tap_runs import tap_settings


@pytest.fixture
def tap_config(sandbox: SandboxServer) -> dict[str, Any]:
    """The tap's config for `sandbox`."""
    return tap_settings(sandbox)
