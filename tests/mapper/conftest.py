"""Fixtures of the mapper and target tests (runners and message builders are in
tests/helpers/; `sandbox` is the session-wide one of tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.helpers.fake_client import FakeGTMCLI


@pytest.fixture
def fake() -> FakeGTMCLI:
    """A scripted client, for the failures the sandbox cannot be told to produce."""
    return FakeGTMCLI()
