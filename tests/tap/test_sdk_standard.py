"""The Singer SDK's standard tap tests, against a seeded sandbox.

The sandbox answers as a newer API version would (quirk `unknown-fields`: a field the
docs do not name on every job and result row), so every object attribute the SDK tests,
`additional_fields` included, has values to test rather than none.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from singer_sdk.testing import get_tap_test_class

from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tap_gtmcli.tap.tap import TapGTMCLI
from tests.helpers.keys import API_KEY

# The standard test class is built at import time, so its sandbox starts here too.
_sandbox = SandboxServer(SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0,
                                       quirks=("unknown-fields",)))
_sandbox.start()
_sandbox.seed_jobs("validate", 250, jobs=2)
_sandbox.seed_jobs("find", 120)
_sandbox.seed_jobs("validate", 10, status="failed")

TestTapGTMCLI = get_tap_test_class(
    TapGTMCLI, config={"api_key": API_KEY, "api_url": _sandbox.url, "results_per_page": 100}
)


@pytest.fixture(autouse=True)
def _each_attribute_reads_its_own_values(request: pytest.FixtureRequest) -> None:
    """singer-sdk 0.54 runs every parametrization of an attribute test on one template
    object whose `non_null_attribute_values` is a cached_property: without this, each
    test would check the values of whichever attribute ran first in the worker."""
    template = getattr(request.function, "__self__", None)
    if template is not None:
        vars(template).pop("non_null_attribute_values", None)


@pytest.fixture(scope="module", autouse=True)
def _stop_sandbox_after_the_module() -> Iterator[None]:
    yield
    _sandbox.stop()
