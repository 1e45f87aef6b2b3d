"""The submitter core shared by `mapper-gtmcli` and `target-gtmcli`.

It takes Singer messages one at a time and returns the messages to emit: passthrough,
the `gtmcli_submissions` ledger, the `gtmcli_rejected` stream, enriched records (enrich
mode) and STATE, which is held until every record read before it has been submitted.
The mapper writes everything it returns; the target writes only the STATE.

Returned iterables may be lazy and submit jobs as they are consumed: consume each one
fully, in order, before passing the next message. In submit mode a job's ledger row is a
`PendingMessage` while its create runs in the background; the writer holds what follows
it until the create confirms, so STATE still waits for the jobs before it.

Messages read from input carry their raw line, and pass through as those exact bytes.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import chain
from typing import Any

from singer_sdk.contrib.msgspec import decoder, encoder

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.timestamps import utc_now_iso
from tap_gtmcli.submit.batches import Batch, OpenBatches
from tap_gtmcli.submit.enrich import NO_ENRICHMENT, EnrichBacklog, ResultsFetcher, extend_schema
from tap_gtmcli.submit.items import ItemExtractor, ItemKey
from tap_gtmcli.submit.job_creation import SubmittedJob
from tap_gtmcli.submit.resubmit_guard import (
    GuardedBatch,
    GuardedJobSubmitter,
    ResubmitGuard,
    enriched_rows,
)
from tap_gtmcli.submit.settings import SubmitSettings
from tap_gtmcli.submit.singer_io import PendingMessage, RawMessage
from tap_gtmcli.submit.state_hold import StateHold

LEDGER_STREAM = "gtmcli_submissions"
REJECTED_STREAM = "gtmcli_rejected"

LEDGER_SCHEMA: dict[str, Any] = {
    "type": "SCHEMA",
    "stream": LEDGER_STREAM,
    "key_properties": ["job_id"],
    "schema": {
        "type": "object",
        "properties": {
            "job_id": {"type": "string"},
            "job_type": {"type": "string"},
            "item_count": {"type": "integer"},
            "source_stream": {"type": "string"},
            "batch_sha256": {"type": "string"},
            "submitted_at": {"type": "string", "format": "date-time"},
            "skipped_item_count": {"type": "integer"},
            "reconciliation": {"type": ["string", "null"]},
        },
        "required": ["job_id", "job_type", "item_count", "source_stream", "batch_sha256"],
    },
}
REJECTED_SCHEMA: dict[str, Any] = {
    "type": "SCHEMA",
    "stream": REJECTED_STREAM,
    "key_properties": [],
    "schema": {
        "type": "object",
        "properties": {
            "source_stream": {"type": ["string", "null"]},
            "reason": {"type": "string"},
            "record": {"type": "string"},
            "rejected_at": {"type": "string", "format": "date-time"},
        },
    },
}

logger = logging.getLogger("tap_gtmcli.submit.submitter")

Messages = Iterable[RawMessage | PendingMessage]


class GTMCLISubmitter:
    """Batches acted-on records into GTMCLI jobs and decides what goes downstream."""

    def __init__(
        self,
        *,
        settings: SubmitSettings,
        client: GTMCLIClient,
        spool_directory: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stream_patterns = settings.streams
        self.enriching = settings.mode == "enrich"
        self.extractor = ItemExtractor(settings=settings)
        self.batches = OpenBatches(batch_size=settings.batch_size)
        self.jobs = GuardedJobSubmitter(
            guard=ResubmitGuard.open(settings, clock),
            client=client,
            webhook_url=settings.webhook_url,
            max_resubmissions=settings.max_retries,
            request_timeout=settings.request_timeout,
        )
        try:
            #: Ledger rows of the jobs an interrupted run created and this one adopted.
            self._adopted = self.jobs.reconcile_interrupted()
        except BaseException:
            self.jobs.close()
            raise
        self.held_states: StateHold[RawMessage] = StateHold()
        self.waiter = ResultsFetcher(
            client=client, poll_interval=settings.poll_interval, max_wait=settings.max_wait
        )
        self.backlog = EnrichBacklog(spool_directory) if self.enriching else None
        self.resubmit_after_days = settings.resubmit_after_days
        #: (batches, items) handed to job creation so far; `self.jobs.confirmed` counts
        #: the jobs and items GTMCLI confirmed, `self.jobs.skipped_*` what the guard kept back.
        self.scheduled = [0, 0]
        self._reported = False
        self.rejections: Counter[str] = Counter()
        self._acts_on_stream: dict[object, bool] = {}
        self._announced: set[str] = set()
        self._seq = 0

    def reconciliation(self) -> Messages:
        """The ledger rows of jobs adopted from an interrupted run (once, before any other
        output: they are no batch of this run's input)."""
        adopted, self._adopted = self._adopted, []
        if not adopted:
            return ()
        return (*self._announce(LEDGER_SCHEMA), *(RawMessage(_ledger_message(job))
                                                 for job in adopted))

    # One method per Singer message type.

    def schema(self, message: dict[str, Any], line: bytes | None = None) -> Messages:
        """Pass a SCHEMA on; in enrich mode extend it, after flushing the stream's batches."""
        self._seq += 1
        stream = message.get("stream")
        if not self.enriching or not self._acts_on(stream):
            return (RawMessage(message, line),)
        # Records waiting under the old schema must go out before the new one.
        flushed = self._flush(self.batches.of_stream(str(stream)))
        extended = {**message, "schema": extend_schema(message.get("schema"))}
        return chain(flushed, (RawMessage(extended),))

    def record(self, message: dict[str, Any], line: bytes | None = None) -> Messages:
        """Batch an acted-on record (or reject it); pass the others on."""
        self._seq += 1
        stream = message.get("stream")
        if not self._acts_on(stream):
            return (RawMessage(message, line),)
        item = self.extractor.extract(message.get("record"))
        if isinstance(item, str):
            return self._reject(str(stream), message, item, line)
        line = line or encoder.encode(message) + b"\n"
        return self._batch(str(stream), item.job_type, item.key, line, message) or ()

    def record_line(self, envelope: Any, line: bytes) -> Messages | None:
        """`record` for a RECORD line decoded by `SingerLineReader`; None: pass the line on.

        `envelope.record` holds only the item fields, so the record is decoded whole only
        when it is rejected (its content goes to the rejected stream).
        """
        stream = envelope.stream
        acts = self._acts_on_stream.get(stream) if type(stream) is str else None
        if acts is None:
            acts = self._acts_on(stream)
        if not acts or envelope.record is None:
            if acts:  # a null or missing record is rejected: take the full path
                return self.record(decoder.decode(line), line)
            self._seq += 1
            return None
        key = self.extractor.email_key(envelope.record)
        if key is not None:
            self._seq += 1
            return self._batch(stream, "validate", key, line, None)
        item = self.extractor.extract_fields(envelope.record)
        if isinstance(item, str):
            return self.record(decoder.decode(line), line)
        self._seq += 1
        return self._batch(stream, item.job_type, item.key, line, None)

    def _batch(
        self, stream: str, job_type: str, key: ItemKey, line: bytes, message: dict[str, Any] | None
    ) -> Messages | None:
        """Add an item to its batch: the record passes on (or is spooled), a full batch goes."""
        batch, position = self.batches.add(stream, job_type, key, self._seq)
        passed: Messages | None
        if self.backlog is not None:
            self.backlog.add(self._seq, batch.number, position, line)
            passed = ()
        elif message is None:
            passed = None
        else:
            passed = (RawMessage(message, line),)
        if len(batch.positions) >= self.batches.batch_size:
            if passed is None:
                passed = (RawMessage(decoder.decode(line), line),)
            return chain(passed, self._flush([batch]))
        return passed

    def state(self, message: dict[str, Any], line: bytes | None = None) -> Messages:
        """Pass a STATE on when nothing is pending, else hold it."""
        self._seq += 1
        if self.batches.oldest_seq() is None:
            return (RawMessage(message, line),)
        self.held_states.hold(self._seq, RawMessage(message, line), self.batches.newest_seq())
        return ()

    def activate_version(self, message: dict[str, Any], line: bytes | None = None) -> Messages:
        """Pass an ACTIVATE_VERSION on; in enrich mode after the stream's waiting records."""
        self._seq += 1
        stream = message.get("stream")
        passed = RawMessage(message, line)
        if not self.enriching or not self._acts_on(stream):
            return (passed,)
        return chain(self._flush(self.batches.of_stream(str(stream))), (passed,))

    def passthrough(self, message: dict[str, Any], line: bytes | None = None) -> Messages:
        """Pass any other message on unchanged."""
        self._seq += 1
        return (RawMessage(message, line),)

    def finish(self) -> Messages:
        """Submit every open batch, then release the last STATE."""
        yield from self._flush(self.batches.all())
        released = self.held_states.release(None)
        if released is not None:
            yield released
        if self.rejections:
            logger.warning(
                "Rejected %d records (not sent to GTMCLI, see stream %s): %s",
                sum(self.rejections.values()),
                REJECTED_STREAM,
                "; ".join(f"{reason}: {count}" for reason, count in self.rejections.most_common()),
            )

    def close(self) -> None:
        """Stop background creates, report what was submitted, remove the backlog file."""
        self.jobs.close()
        self._report()
        if self.backlog is not None:
            self.backlog.close()

    def _report(self) -> None:
        """Jobs GTMCLI confirmed; batches that failed, were cancelled or never closed
        are reported as not submitted (once: close may be called twice)."""
        if self._reported:
            return
        self._reported = True
        jobs, items = self.jobs.confirmed
        if self.jobs.skipped_items:
            logger.info(
                "Skipped %s items submitted in the last %d days",
                f"{self.jobs.skipped_items:,}", self.resubmit_after_days,
            )
        still_open = self.batches.all()
        unconfirmed_jobs = (
            self.scheduled[0] - jobs - self.jobs.skipped_batches + len(still_open)
        )
        unconfirmed_items = (
            self.scheduled[1] - items - self.jobs.skipped_items
            + sum(len(batch) for batch in still_open)
        )
        if unconfirmed_jobs:
            logger.warning(
                "Submitted %d GTMCLI jobs (%d items); not submitted: %d batches (%d items)",
                jobs, items, unconfirmed_jobs, unconfirmed_items,
            )
        else:
            logger.info("Submitted %d GTMCLI jobs (%d items)", jobs, items)

    # Internals.

    def _acts_on(self, stream: object) -> bool:
        acts = self._acts_on_stream.get(stream)
        if acts is None:
            acts = isinstance(stream, str) and any(
                fnmatch.fnmatchcase(stream, pattern) for pattern in self.stream_patterns
            )
            self._acts_on_stream[stream] = acts
        return acts

    def _announce(self, schema: dict[str, Any]) -> tuple[RawMessage, ...]:
        """A stream's SCHEMA the first time one of its records is emitted."""
        if schema["stream"] in self._announced:
            return ()
        self._announced.add(schema["stream"])
        return (RawMessage(schema),)

    def _reject(
        self, stream: str, message: dict[str, Any], reason: str, line: bytes | None = None
    ) -> Messages:
        self.rejections[reason] += 1
        record = message.get("record")
        if self.enriching and isinstance(record, dict):
            passed = RawMessage({**message, "record": {**record, **NO_ENRICHMENT}})
        else:
            passed = RawMessage(message, line)
        rejected = {
            "type": "RECORD",
            "stream": REJECTED_STREAM,
            "record": {
                "source_stream": stream,
                "reason": reason,
                "record": encoder.encode(record).decode(),
                "rejected_at": utc_now_iso(),
            },
        }
        return (passed, *self._announce(REJECTED_SCHEMA), RawMessage(rejected))

    def _flush(self, batches: list[Batch]) -> Iterator[RawMessage | PendingMessage]:
        """Submit batches (and in enrich mode emit their records), releasing STATE after each."""
        for batch in batches:
            self.batches.close(batch)
            self.scheduled[0] += 1
            self.scheduled[1] += len(batch)
            if self.backlog is None:
                # The create runs in the background; the writer holds everything after
                # the ledger row (the STATE released below included) until it confirms.
                future = self.jobs.submit_in_background(batch)
                schemas = [message.body for message in self._announce(LEDGER_SCHEMA)]
                yield PendingMessage(future, partial(_ledger_messages, schemas))
            else:
                guarded, job = self.jobs.submit_guarded(batch)
                yield from self._announce(LEDGER_SCHEMA)
                yield RawMessage(_ledger_message(job))
                yield from self._enriched_records(guarded, job)
            released = self.held_states.release(self.batches.oldest_seq())
            if released is not None:
                yield released

    def _enriched_records(self, guarded: GuardedBatch, job: SubmittedJob) -> Iterator[RawMessage]:
        """The batch's records with results: kept ones from the index, the rest fetched."""
        assert self.backlog is not None
        batch, sent = guarded.batch, guarded.to_send
        fetched: Iterator[tuple[int, dict[str, Any]]] = iter(())
        emails: list[str] | None = None
        if sent.positions:
            self.waiter.wait(job.job_id)
            if sent.job_type == "validate":  # validate items are keyed by their email
                emails = [key for key in sent.positions if isinstance(key, str)]
            fetched = self.waiter.result_rows(job.job_id, job.job_type, emails, len(sent))
        guard = self.jobs.guard
        keep = guard.keep_results if guard is not None else _keep_nothing
        rows = enriched_rows(guarded, fetched, encoder.encode, keep, decoder.decode)
        self.backlog.add_results(batch.number, rows)
        del emails
        for message in self.backlog.enriched(batch.number):
            yield RawMessage(message)


def _keep_nothing(_results: list[tuple[bytes, bytes]]) -> None:
    """Without an index, fetched results are not kept."""


def _ledger_message(job: SubmittedJob) -> dict[str, Any]:
    return {"type": "RECORD", "stream": LEDGER_STREAM, "record": job.ledger_record()}


def _ledger_messages(schemas: list[dict[str, Any]], job: SubmittedJob) -> list[dict[str, Any]]:
    """The ledger SCHEMA (first job only) and row of a job created in the background."""
    return [*schemas, _ledger_message(job)]
