"""`mapper-gtmcli`: submits the records of a Singer stream to GTMCLI as async jobs.

Every message passes through in order (enrich mode holds acted-on records back until
their job's results are attached); STATE waits until the records before it are
submitted, so a rerun after a failure resubmits exactly what was not confirmed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from types import FrameType
from typing import IO, Any, ClassVar

from singer_sdk import InlineMapper
from singer_sdk.helpers.capabilities import PluginCapabilities
from singer_sdk.singerlib import Message
from singer_sdk.singerlib.exceptions import InvalidInputLine

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.config_check import KeySafeConfig
from tap_gtmcli.api.errors import EnrichmentFailedError, SubmissionFailedError
from tap_gtmcli.api.retry import RetryPolicy
from tap_gtmcli.api.stop_signals import LineBoundary
from tap_gtmcli.submit.settings import SUBMIT_SETTINGS, SubmitSettings
from tap_gtmcli.submit.singer_io import BufferedMsgSpecWriter, SingerLineReader, envelope_decoder
from tap_gtmcli.submit.submitter import GTMCLISubmitter

#: The failures that end a run with a message instead of a traceback.
RUN_STOPPING_ERRORS = (SubmissionFailedError, EnrichmentFailedError)


def build_client(settings: SubmitSettings) -> GTMCLIClient:
    """The GTMCLI client for these settings, with the shared retry policy."""
    return GTMCLIClient(
        api_url=settings.api_url,
        api_key=settings.api_key,
        timeout=settings.request_timeout,
        retry=RetryPolicy(max_retries=settings.max_retries),
    )


class GTMCLIMapper(KeySafeConfig, InlineMapper):
    """Submits records to GTMCLI and passes the stream through."""

    name = "mapper-gtmcli"
    # The SDK reads the version from the installed distribution named by `package_name`
    # (else by `name`): both plugins ship in the `tap-gtmcli` distribution.
    package_name = "tap-gtmcli"
    config_jsonschema = SUBMIT_SETTINGS.to_dict()
    capabilities: ClassVar[list[Any]] = [
        PluginCapabilities.ABOUT,
        PluginCapabilities.STRUCTURED_LOGGING,
    ]
    message_reader_class = SingerLineReader
    message_writer_class = BufferedMsgSpecWriter

    def __init__(
        self,
        *,
        config: dict[str, Any] | None = None,
        parse_env_config: bool = False,
        validate_config: bool = True,
        output: IO[bytes] | None = None,
        client: GTMCLIClient | None = None,
    ) -> None:
        """Build the submitter once from config; `output` and `client` are for tests."""
        self.output_writer = BufferedMsgSpecWriter(output)
        super().__init__(
            config=config,
            parse_env_config=parse_env_config,
            validate_config=validate_config,
            message_writer=self.output_writer,
        )
        self.settings = SubmitSettings.from_config(self.config)
        self.client = client or build_client(self.settings)
        self.submitter = GTMCLISubmitter(settings=self.settings, client=self.client)
        self.message_reader: SingerLineReader = SingerLineReader(
            envelopes=envelope_decoder(self.submitter.extractor.fields_type),
            on_record=self._process_record_line,
            on_bad_line=self._stop_on_bad_input,
        )
        self._pass_line: Callable[[bytes], None] = self.output_writer.write_line
        self._line_boundary = LineBoundary(self.output_writer)
        self._write_reconciliation()

    def _write_reconciliation(self) -> None:
        """The ledger rows of jobs adopted from an interrupted run go out first."""
        self._write_messages(self.submitter.reconciliation())

    # The SDK routes each message to its `map_*` method with the message's dict; the
    # reader keeps the raw line being routed, so a passthrough writes those exact bytes.

    def map_schema_message(self, message_dict: dict[str, Any]) -> Iterable[Message]:
        """Pass the SCHEMA on (extended with `gtmcli_*` fields in enrich mode)."""
        return self.submitter.schema(message_dict, self.message_reader.line)

    def map_record_message(self, message_dict: dict[str, Any]) -> Iterable[Message]:
        """Pass the record on and batch it for GTMCLI."""
        return self.submitter.record(message_dict, self.message_reader.line)

    def map_state_message(self, message_dict: dict[str, Any]) -> Iterable[Message]:
        """Hold the STATE until the records before it are submitted."""
        return self.submitter.state(message_dict, self.message_reader.line)

    def map_activate_version_message(self, message_dict: dict[str, Any]) -> Iterable[Message]:
        """Pass ACTIVATE_VERSION on."""
        return self.submitter.activate_version(message_dict, self.message_reader.line)

    def map_batch_message(self, message_dict: dict[str, Any]) -> Iterable[Message]:
        """Pass BATCH manifests on: their records are not in the stream to submit."""
        self.logger.warning("Passing a BATCH message on without submitting its records")
        return self.submitter.passthrough(message_dict, self.message_reader.line)

    def _process_record_line(self, envelope: Any, line: bytes) -> None:
        """The per-record fast path: most records only pass their line on."""
        messages = self.submitter.record_line(envelope, line)
        if messages is not None:
            self._write_messages(messages)
            return
        self._closing_on_failure(self._pass_line, line)

    def _write_messages(self, messages: Iterable[Message]) -> None:
        self._closing_on_failure(self._write_each, messages)

    def _write_each(self, messages: Iterable[Message]) -> None:
        for message in messages:
            self.output_writer.write_message(message)

    def _closing_on_failure(self, call: Callable[..., None], *args: Any) -> None:
        """Call; a run-stopping failure closes the mapper before it propagates.

        So a failed submission still delivers the passthrough written so far and removes
        the spool; the held STATE was never written, by design. A call, not a context
        manager: the per-record fast path goes through it for every line.
        """
        try:
            call(*args)
        except RUN_STOPPING_ERRORS:
            self.close()
            raise

    def process_endofpipe(self) -> None:
        """Submit what is left, wait for every create, release the last STATE, clean up."""
        self._write_messages(self.submitter.finish())
        self._closing_on_failure(self.output_writer.drain)
        self.close()

    def _stop_on_bad_input(self) -> None:
        """Before a bad input line stops the run: confirm the creates already running."""
        try:
            self.output_writer.drain()
        except RUN_STOPPING_ERRORS as error:
            self.logger.error("%s", error)
        finally:
            self.close()

    def close(self) -> None:
        """Flush the output and release the spool and the connection pool."""
        self.output_writer.flush()
        self.submitter.close()
        self.client.close()

    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM / SIGINT: stop, and exit non-zero. The SDK's handler exits 0, so a run
        stopped mid-input (or mid-way through its failure exit, after logging the error)
        read as a success. Nothing past the last STATE written is confirmed; a create
        already running finishes as the interpreter exits, and none starts after it."""
        # A line being written is finished first: a RECORD is never cut by the exit.
        boundary = getattr(self, "_line_boundary", None)
        if boundary is not None and boundary.put_off(signum, frame):
            return
        # The SDK installs this handler before the submitter exists (opening the index
        # can take seconds): a signal then has no create to stop.
        submitter = getattr(self, "submitter", None)
        if submitter is not None:
            submitter.jobs.stop_creating()
        self.logger.error(
            "Stopped by signal %d: nothing after the last STATE written is confirmed", signum
        )
        sys.exit(128 + signum)

    @classmethod
    def invoke(cls, **kwargs: Any) -> None:
        """Run as a CLI; a failed submission ends the run with its message, exit code 1."""
        try:
            super().invoke(**kwargs)
        except (*RUN_STOPPING_ERRORS, InvalidInputLine) as error:
            cls.logger.error("%s", error)
            sys.exit(1)
