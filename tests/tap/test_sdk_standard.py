"""The Singer SDK's standard tap tests, against a seeded sandbox."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from singer_sdk.testing import get_tap_test_class

from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tap_gtmcli.tap.tap import TapGTMCLI
from tests.helpers.keys import API_KEY

# The standard test class is built at import time, so its sandbox starts here too.
_sandbox = SandboxServer(SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0))
_sandbox.start()
_sandbox.seed_jobs("validate", 250, jobs=2)
_sandbox.seed_jobs("find", 120)
_sandbox.seed_jobs("validate", 10, status="failed")

TestTapGTMCLI = get_tap_test_class(
    TapGTMCLI, config={"api_key": API_KEY, "api_url": _sandbox.url, "results_per_page": 100}
)


@pytest.fixture(scope="module", autouse=True)
def _stop_sandbox_after_the_module() -> Iterator[None]:
    yield
    _sandbox.stop()
