"""`target-gtmcli`: submits any tap's records to GTMCLI as jobs, and confirms STATE.

Why an `InlineMapper` and not the SDK's `Target`: the SDK's sinks drain on their own
schedule and the SDK emits STATE when *it* decides the sinks are done, while our
guarantee is tied to job creation (a STATE may go out only after the jobs holding every
record before it exist), and a batch here is a set of distinct items per job type, not a
sink's record list. The mapper's submitter core already makes exactly those decisions,
so the target runs the same core and writes only what a target writes: the STATE it
confirms. The ledger goes to the log and, with `ledger_path`, to a JSON-lines file.
`--about`, `--config` and `--input` come from the SDK plugin base as for any plugin.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, ClassVar

from singer_sdk import typing as th
from singer_sdk.exceptions import ConfigValidationError
from singer_sdk.singerlib import Message

from tap_gtmcli.submit.mapper import GTMCLIMapper
from tap_gtmcli.submit.settings import LEDGER_PATH_SETTING, SUBMIT_SETTINGS
from tap_gtmcli.submit.singer_io import PendingMessage, RawMessage
from tap_gtmcli.submit.submitter import LEDGER_STREAM


def _discard(_line: bytes) -> None:
    """Drop a passthrough line."""


class TargetGTMCLI(GTMCLIMapper):
    """Submits records to GTMCLI; writes only the confirmed STATE to stdout."""

    name = "target-gtmcli"
    config_jsonschema: ClassVar[dict[str, Any]] = th.PropertiesList(
        *SUBMIT_SETTINGS.wrapped.values(), LEDGER_PATH_SETTING
    ).to_dict()

    def __init__(self, **options: Any) -> None:
        """Build the submitter core once from config, as the mapper does (same options)."""
        super().__init__(**options)
        if self.settings.mode != "submit":
            self.close()
            raise ConfigValidationError(
                "Config validation failed",
                errors=["mode: target-gtmcli only submits; use mapper-gtmcli for enrich"],
            )
        # A target writes no passthrough: only the STATE it confirms.
        self._pass_line = _discard
        ledger_path = self.config.get("ledger_path")
        self.ledger_file: IO[str] | None = (
            Path(ledger_path).open("a", encoding="utf-8") if ledger_path else None  # noqa: SIM115
        )
        super()._write_reconciliation()

    def _write_reconciliation(self) -> None:
        """Written once the ledger file is open (the mapper's constructor runs first)."""

    def _write_messages(self, messages: Iterable[Message]) -> None:
        super()._write_messages(self._confirmations(messages))

    def _confirmations(self, messages: Iterable[Message]) -> Iterable[Message]:
        """Only the STATE goes to stdout; the ledger goes to the log and the ledger file."""
        for message in messages:
            # The target writes only STATE, so it simply waits for each create.
            resolved = message.resolve() if isinstance(message, PendingMessage) else [message]
            for each in resolved:
                if each.type == "STATE":
                    yield each
                elif isinstance(each, RawMessage) and self._is_ledger_record(each.body):
                    self._record_ledger(each.body["record"])

    @staticmethod
    def _is_ledger_record(body: dict[str, Any]) -> bool:
        return body.get("type") == "RECORD" and body.get("stream") == LEDGER_STREAM

    def _record_ledger(self, row: dict[str, Any]) -> None:
        self.logger.info("Ledger: %s", json.dumps(row, sort_keys=True))
        if self.ledger_file is not None:
            self.ledger_file.write(json.dumps(row) + "\n")
            # Flushed per job: the ledger must survive a failure of a later batch.
            self.ledger_file.flush()

    def close(self) -> None:
        """Close the ledger file too."""
        super().close()
        ledger_file = getattr(self, "ledger_file", None)
        if ledger_file is not None:
            ledger_file.close()
            self.ledger_file = None
