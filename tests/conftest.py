"""Session-wide test rules: every plugin run is scanned for the API key (tests/key_scan.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import key_scan

key_scan.install()


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
