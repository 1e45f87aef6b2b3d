"""tap-gtmcli: settings and the stream list."""

from __future__ import annotations

import sys
from functools import cached_property
from types import FrameType
from typing import Any, ClassVar

from singer_sdk import Tap
from singer_sdk import typing as th
from singer_sdk.exceptions import ConfigValidationError, FatalAPIError, RetriableAPIError
from singer_sdk.helpers.capabilities import CapabilitiesEnum, PluginCapabilities, TapCapabilities
from typing_extensions import override

from tap_gtmcli.api.config_check import KeySafeConfig
from tap_gtmcli.api.errors import GTMCLIRetriesExhaustedError
from tap_gtmcli.api.settings import (
    API_KEY,
    API_URL,
    MAX_RATE_LIMIT_WAIT,
    MAX_RETRIES,
    REQUEST_TIMEOUT,
)
from tap_gtmcli.api.stop_signals import RunStopped, StopSignals
from tap_gtmcli.tap.batch_files import BatchSpool
from tap_gtmcli.tap.job_rows import JobsNotReadError
from tap_gtmcli.tap.job_waiter import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL_MAX,
    PollSchedule,
)
from tap_gtmcli.tap.message_writer import TapMessageWriter
from tap_gtmcli.tap.pacer import LIMITED_CAP, POLITE_CAP, Pacer
from tap_gtmcli.tap.streams import (
    DEFAULT_READ_AHEAD_MB,
    MAX_RESULTS_PER_PAGE,
    JobResultsStream,
    JobsStream,
)


class TapGTMCLI(KeySafeConfig, Tap):
    """Extracts GTMCLI jobs and the results of completed jobs, incrementally."""

    name = "tap-gtmcli"
    message_writer_class = TapMessageWriter
    # Not ACTIVATE_VERSION: runs are incremental, and a version message would tell the
    # target to drop every row an earlier run loaded. BATCH: see batch_files.py.
    capabilities: ClassVar[list[CapabilitiesEnum]] = [
        PluginCapabilities.BATCH,
        TapCapabilities.CATALOG,
        TapCapabilities.STATE,
        TapCapabilities.DISCOVER,
        PluginCapabilities.ABOUT,
        PluginCapabilities.STREAM_MAPS,
        PluginCapabilities.FLATTENING,
        PluginCapabilities.STRUCTURED_LOGGING,
    ]

    config_jsonschema = th.PropertiesList(
        API_KEY,
        API_URL,
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
        REQUEST_TIMEOUT,
        MAX_RETRIES,
        MAX_RATE_LIMIT_WAIT,
        th.Property(
            "max_parallel_requests",
            th.IntegerType(minimum=1),
            title="Max parallel requests",
            description="Upper bound on requests in flight at once. Default: automatic: "
            f"with an advertised rate limit up to {LIMITED_CAP} (the pacer spaces their "
            "starts); without one, it doubles each round trip and halves on 429, 5xx or "
            f"timeouts (at most {POLITE_CAP}). Requests stay under the plan's rate limit "
            "whatever the value; 1 reads pages one after another.",
        ),
        th.Property(
            "max_read_ahead_mb",
            th.NumberType(minimum=1),
            default=DEFAULT_READ_AHEAD_MB,
            title="Max read-ahead (MB)",
            description="Megabytes of result pages, of this job and later ones, fetched "
            "ahead and waiting for their turn to be written; keeps memory bounded "
            "whatever the window.",
        ),
        th.Property(
            "wait_for_jobs",
            th.IntegerType(minimum=0),
            default=0,
            title="Wait for jobs",
            description="Seconds a run keeps checking jobs still pending or processing "
            "(new ones, or open ones from earlier runs), emitting each job and its results "
            "the moment it finishes. When the time is up the run exits 0 with a warning, "
            "and jobs still open stay in state for the next run. 0: do not wait.",
        ),
        th.Property(
            "poll_interval",
            th.NumberType(exclusive_minimum=0),
            default=DEFAULT_POLL_INTERVAL,
            title="Poll interval",
            description="While waiting (`wait_for_jobs`): seconds before the first check; "
            "each later check waits 1.5 times longer, up to `poll_interval_max`. One request "
            "per check covers every open job.",
        ),
        th.Property(
            "poll_interval_max",
            th.NumberType(exclusive_minimum=0),
            default=DEFAULT_POLL_INTERVAL_MAX,
            title="Poll interval max",
            description="While waiting (`wait_for_jobs`): the longest pause between two "
            "checks, in seconds.",
        ),
    ).to_dict()

    #: BATCH mode's one spool of files for every stream, built by the first that needs it.
    batch_spool: BatchSpool | None = None

    @cached_property
    def pacer(self) -> Pacer:
        """The run's one pacer: the limit is per key, so every stream and worker shares it."""
        setting = self.config.get("max_parallel_requests")
        return Pacer(max_in_flight=int(setting) if setting else None)

    @cached_property
    def stop_signals(self) -> StopSignals:
        """SIGINT/SIGTERM noted here; the streams stop where nothing is half-written."""
        return StopSignals()

    @override
    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        # Not the SDK's: it exits 0 from wherever the main thread is, mid-line.
        self.stop_signals.handle(signum, frame)

    # `final` in the SDK; wrapped, not replaced: the stop's STATE is written here, where
    # the tap's whole state is known, whichever stream the stop came through.
    @override  # type: ignore[misc]
    def sync_all(self) -> None:
        try:
            super().sync_all()
        except RunStopped as stop:
            # Every job settled in it had its rows written first: it covers exactly what
            # went out (in BATCH mode, jobs settle only once their files are announced).
            self.state_writer.write_state(self.state)
            self.logger.error(
                "Stopped by %s: the last STATE written covers every row sent; the next run "
                "goes on from there", stop.args[0].removeprefix("stopped by "))
            raise

    @classmethod
    @override
    def invoke(cls, *args: Any, **kwargs: Any) -> None:
        """Run as a CLI: a stop by signal exits 128 + its number; a failure the tap
        understands ends with its message (no traceback) and exit code 1."""
        try:
            super().invoke(*args, **kwargs)
        except RunStopped as stop:
            sys.exit(stop.exit_code)
        except BrokenPipeError:
            cls.logger.error("The loader stopped reading the tap's output; stopping")
            sys.exit(1)
        except (JobsNotReadError, FatalAPIError, RetriableAPIError,
                GTMCLIRetriesExhaustedError) as error:
            cls.logger.error("%s", error)
            sys.exit(1)

    @override
    def discover_streams(self) -> list[JobsStream | JobResultsStream]:
        try:
            PollSchedule.from_settings(self.config)
        except ValueError as error:  # before any request, not after a long extraction
            raise ConfigValidationError(str(error), errors=[str(error)]) from None
        return [JobsStream(self), JobResultsStream(self)]


if __name__ == "__main__":
    TapGTMCLI.cli()
