"""gtmcli-sandbox: a local GTMCLI-compatible server for tests and benchmarks."""

from tap_gtmcli.sandbox.config import SandboxConfig
from tap_gtmcli.sandbox.errors import ApiError
from tap_gtmcli.sandbox.faults import FaultRule
from tap_gtmcli.sandbox.outcomes import job_cost
from tap_gtmcli.sandbox.server import SandboxServer

__all__ = ["ApiError", "FaultRule", "SandboxConfig", "SandboxServer", "job_cost"]
