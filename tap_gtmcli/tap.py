"""tap-gtmcli: settings and the stream list."""

from __future__ import annotations

from typing import ClassVar

from singer_sdk import Tap
from singer_sdk import typing as th
from singer_sdk.helpers.capabilities import CapabilitiesEnum, PluginCapabilities, TapCapabilities
from typing_extensions import override

from tap_gtmcli.client import DEFAULT_API_URL
from tap_gtmcli.message_writer import TapMessageWriter
from tap_gtmcli.redaction import redact_secrets_in_logs
from tap_gtmcli.stream_base import DEFAULT_MAX_PARALLEL_REQUESTS
from tap_gtmcli.streams import MAX_RESULTS_PER_PAGE, JobResultsStream, JobsStream


class TapGTMCLI(Tap):
    """Extracts GTMCLI jobs and the results of completed jobs, incrementally."""

    name = "tap-gtmcli"
    message_writer_class = TapMessageWriter
    # Not ACTIVATE_VERSION: runs are incremental, and a version message would tell the
    # target to drop every row an earlier run loaded. Not BATCH: untested here.
    capabilities: ClassVar[list[CapabilitiesEnum]] = [
        TapCapabilities.CATALOG,
        TapCapabilities.STATE,
        TapCapabilities.DISCOVER,
        PluginCapabilities.ABOUT,
        PluginCapabilities.STREAM_MAPS,
        PluginCapabilities.FLATTENING,
        PluginCapabilities.STRUCTURED_LOGGING,
    ]

    config_jsonschema = th.PropertiesList(
        th.Property(
            "api_key",
            th.StringType,
            required=True,
            secret=True,
            title="API key",
            description="GTMCLI API key (gtm_live_...). Sent as a Bearer token; never logged.",
        ),
        th.Property(
            "api_url",
            th.StringType,
            default=DEFAULT_API_URL,
            title="API URL",
            description="Base URL of the GTMCLI API; point it at gtmcli-sandbox to try "
            "the tap without an account.",
        ),
        th.Property(
            "start_date",
            th.DateTimeType,
            title="Start date",
            description="Ignore jobs created before this moment (ISO-8601). "
            "Default: every job.",
        ),
        th.Property(
            "job_types",
            th.ArrayType(th.StringType(allowed_values=["validate", "find"])),
            title="Job types",
            description="Extract only jobs of these types (validate, find). Default: both.",
        ),
        th.Property(
            "results_per_page",
            th.IntegerType(minimum=1, maximum=MAX_RESULTS_PER_PAGE),
            default=MAX_RESULTS_PER_PAGE,
            title="Results per page",
            description="Result rows asked for per request (1 to 1000).",
        ),
        th.Property(
            "request_timeout",
            th.IntegerType(minimum=1),
            default=60,
            title="Request timeout",
            description="Seconds to wait for an answer before the request is retried.",
        ),
        th.Property(
            "max_retries",
            th.IntegerType(minimum=0),
            default=5,
            title="Max retries",
            description="Retries of a failed request (429, 5xx, timeouts, dropped "
            "connections) before the run fails. Retry-After is honoured exactly.",
        ),
        th.Property(
            "max_parallel_requests",
            th.IntegerType(minimum=1),
            default=DEFAULT_MAX_PARALLEL_REQUESTS,
            title="Max parallel requests",
            description="Result pages of a job downloaded at once (and held at most "
            "before they are written). Requests stay under the plan's rate limit "
            "whatever the value; 1 reads pages one after another.",
        ),
    ).to_dict()

    @override
    def discover_streams(self) -> list[JobsStream | JobResultsStream]:
        redact_secrets_in_logs(str(self.config.get("api_key") or ""))
        return [JobsStream(self), JobResultsStream(self)]


if __name__ == "__main__":
    TapGTMCLI.cli()
