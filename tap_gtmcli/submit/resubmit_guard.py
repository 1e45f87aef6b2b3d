"""Pay once per contact: a batch's items submitted within `resubmit_after_days` are not sent.

The rule: an item counts as submitted when GTMCLI confirms the job holding it, and the
index is written right then, before the job is handed back, so before the STATE behind
it can be released. Before each create the batch is written as an intent; a run killed
between the create and the index write leaves it open, and the next run adopts the job
it made (`intent_reconciler.py`) rather than paying for the batch again. A create that
certainly made no job releases the batch's claims; one that may have made a job keeps
its intent open for the next run. Skipped records still pass through; in enrich mode
they get the result the index kept for them.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, cast

from tap_gtmcli.api.errors import (
    GTMCLIFatalError,
    GTMCLIRetriableError,
    GTMCLIRetriesExhaustedError,
    SubmissionFailedError,
    SubmissionIndexError,
)
from tap_gtmcli.api.timestamps import utc_now_iso
from tap_gtmcli.submit.batches import Batch
from tap_gtmcli.submit.intent_reconciler import IntentReconciler
from tap_gtmcli.submit.items import ItemKey
from tap_gtmcli.submit.job_creation import JobSubmitter, SubmittedJob
from tap_gtmcli.submit.settings import SubmitSettings
from tap_gtmcli.submit.submission_index import (
    DIGEST_BYTES,
    Intent,
    Known,
    SubmissionIndex,
    account_id,
    account_secret,
    default_location,
    open_index,
)

SECONDS_PER_DAY = 86_400
#: The ledger's `job_id` of a batch whose every item was skipped: no job was created.
SKIPPED_JOB_PREFIX = "skipped:"
#: `batch_sha256` of a batch that sent nothing: the SHA-256 of the empty JSON array.
NOTHING_SENT_SHA256 = hashlib.sha256(b"[]").hexdigest()

#: The enrichment field a validate result shares with its item.
VALIDATED_EMAIL = "gtmcli_email"

logger = logging.getLogger("tap_gtmcli.submit.resubmit_guard")


@dataclass
class GuardedBatch:
    """A batch split into the items to send and the items GTMCLI already has."""

    batch: Batch
    #: The items to send, renumbered from 0 (the batch itself when nothing is skipped).
    to_send: Batch
    #: The digest of each item to send, by its position in `to_send`.
    digests: list[bytes]
    #: The batch position of each item to send; None when `to_send` is the batch.
    positions: list[int] | None
    skipped: int = 0
    #: (batch position, stored result, item) of skipped items whose result the index kept.
    known_results: list[tuple[int, bytes, ItemKey]] = field(default_factory=list)
    #: The index's intent for this batch's create (0: no index).
    intent: int = 0
    #: Why items of an interrupted run's create are sent again in this batch, if they are.
    resent_because: str | None = None

    def batch_position(self, send_position: int) -> int:
        """Where an item of `to_send` sits in the original batch."""
        return send_position if self.positions is None else self.positions[send_position]


class ResubmitGuard:
    """Splits batches against the submission index and keeps the index up to date."""

    def __init__(
        self,
        index: SubmissionIndex,
        *,
        secret: bytes,
        window_days: int,
        need_results: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.window_days = window_days
        self.need_results = need_results
        self._clock = clock
        # BLAKE2 keyed by prefixing the secret (it has no length extension); cheaper per
        # short item than a keyed hasher's copy, and this runs once per item.
        self._prefix = {job_type: secret + job_type.encode() + b"\x00"
                        for job_type in ("validate", "find")}
        self.account = account_id(secret)
        self.skipped_items = 0
        #: Digest prefix -> why: the items of interrupted creates that are sent again.
        self._resent_because: dict[bytes, str] = {}

    @classmethod
    def open(
        cls, settings: SubmitSettings, clock: Callable[[], float] = time.time
    ) -> ResubmitGuard | None:
        """The guard the settings ask for (None when `resubmit_after_days` is 0).

        Opening checks the index and prunes what fell out of the longest window any run
        of it used (never a shorter one: the index may be shared), so a corrupt
        or unreadable index stops the run before anything is read or submitted.
        """
        if settings.resubmit_after_days == 0:
            return None
        index = open_index(settings.submission_index or default_location())
        guard = cls(
            index,
            secret=account_secret(settings.api_url, settings.api_key),
            window_days=settings.resubmit_after_days,
            need_results=settings.mode == "enrich",
            clock=clock,
        )
        try:
            longest_days = index.longest_window(guard.window_days)
            index.start(
                since=guard.window_start(),
                prune_before=int(clock()) - longest_days * SECONDS_PER_DAY,
            )
        except SubmissionIndexError:
            index.close()
            raise
        return guard

    def window_start(self) -> int:
        """Items submitted at this Unix second or later are not sent again."""
        return int(self._clock()) - self.window_days * SECONDS_PER_DAY

    def digests(self, job_type: str, keys: list[ItemKey]) -> list[bytes]:
        """The index keys of a batch's normalised items (keyed by the account)."""
        prefix, blake2b = self._prefix[job_type], hashlib.blake2b
        if job_type == "validate":  # a batch holds one job type: its keys are emails
            emails = cast("list[str]", keys)
            return [
                blake2b(prefix + email.encode(), digest_size=DIGEST_BYTES).digest()
                for email in emails
            ]
        finder_keys = cast("list[tuple[str, str, str]]", keys)
        return [
            blake2b(prefix + "\x00".join(key).encode(), digest_size=DIGEST_BYTES).digest()
            for key in finder_keys
        ]

    def split(self, batch: Batch) -> GuardedBatch:
        """Claim the batch's items under a new intent; those the index knows are skipped."""
        guarded = self._split(batch)
        if not guarded.to_send.positions:
            self.index.release([], guarded.intent)
        elif self._resent_because:
            guarded.resent_because = next(
                (self._resent_because[digest] for digest in guarded.digests
                 if digest in self._resent_because),
                None,
            )
        return guarded

    def _split(self, batch: Batch) -> GuardedBatch:
        keys = list(batch.positions)
        job_type = batch.job_type
        digests = self.digests(job_type, keys)
        now = int(self._clock())
        intent = self.index.new_intent(self.account, job_type, batch.source_stream, now=now)
        known: Known = self.index.claim(
            digests,
            now=now,
            since=self.window_start(),
            need_results=self.need_results,
            intent=intent,
        )
        if not known:
            return GuardedBatch(
                batch=batch, to_send=batch, digests=digests, positions=None, intent=intent
            )
        to_send = Batch(
            number=batch.number,
            source_stream=batch.source_stream,
            job_type=job_type,
            first_seq=batch.first_seq,
        )
        guarded = GuardedBatch(
            batch=batch, to_send=to_send, digests=[], positions=[], intent=intent
        )
        if len(known) == len(keys) and not self.need_results:  # an unchanged batch
            guarded.skipped = len(keys)
            self.skipped_items += guarded.skipped
            return guarded
        sent_positions = to_send.positions
        assert guarded.positions is not None
        for position, (key, item_digest) in enumerate(zip(keys, digests, strict=True)):
            if item_digest in known:
                result = known[item_digest]
                if result is not None:
                    guarded.known_results.append((position, result, key))
            else:
                sent_positions[key] = len(sent_positions)
                guarded.positions.append(position)
                guarded.digests.append(item_digest)
        guarded.skipped = len(keys) - len(sent_positions)
        self.skipped_items += guarded.skipped
        return guarded

    def mark_sent(self, guarded: GuardedBatch, batch_sha256: str) -> None:
        """The create is about to go: the intent says what and when, in case of a kill."""
        self.index.mark_sent(
            guarded.intent, digests=guarded.digests, batch_sha256=batch_sha256,
            sent_at=time.time(),
        )

    def confirm(self, guarded: GuardedBatch, job: SubmittedJob) -> None:
        """GTMCLI confirmed the job: its items count as submitted from now."""
        try:
            self.index.record(
                guarded.digests, job_id=job.job_id, job_type=job.job_type,
                now=int(self._clock()), intent=guarded.intent,
            )
        except SubmissionIndexError as error:
            msg = (
                f"GTMCLI created {job.job_id} ({len(guarded.digests)} items), but {error} "
                "A rerun from the last STATE sends those items again."
            )
            raise SubmissionIndexError(msg) from error

    def release(self, guarded: GuardedBatch) -> None:
        """The create certainly made no job: free the claims and forget the intent."""
        try:
            self.index.release(guarded.digests, guarded.intent)
        except SubmissionIndexError as error:
            logger.warning("%s", error)

    def reconcile(self, reconciler: IntentReconciler) -> list[tuple[Intent, str | None, str]]:
        """Settle the creates interrupted runs left open: (intent, job adopted, why) each.

        An adopted job's items count as submitted; an intent matched to no job, or to
        several, is forgotten, and the batch that sends its items again says why.
        """
        intents = self.index.open_intents(self.account)
        if not intents:
            return []
        outcomes = reconciler.reconcile(intents, self.index.recorded_job_ids())
        settled = []
        for outcome in outcomes:
            if outcome.job_id is not None:
                self.index.adopt(outcome.intent, outcome.job_id, now=int(self._clock()))
            else:
                self.index.abandon(outcome.intent)
                for digest in outcome.intent.digest_list():
                    self._resent_because[digest] = outcome.reason
            logger.warning("Interrupted create reconciled, %s", outcome.reason)
            settled.append((outcome.intent, outcome.job_id, outcome.reason))
        return settled

    def first_item_digest(self, client: Any, job: dict[str, Any]) -> bytes | None:
        """The digest of a validate job's first item, read from its first result row."""
        try:
            rows = client.get_results_page(job["id"], 1, 1).get("results") or []
        except (GTMCLIFatalError, GTMCLIRetriesExhaustedError, GTMCLIRetriableError):
            return None  # unreadable: the content cannot tell, the other checks decide
        email = rows[0].get("email") if rows and isinstance(rows[0], dict) else None
        if not isinstance(email, str) or not email.strip():
            return None
        return self.digests("validate", [email.strip().lower()])[0]

    def keep_results(self, results: Iterable[tuple[bytes, bytes]]) -> None:
        """Store fetched results (digest, encoded `gtmcli_*` fields) for later runs."""
        self.index.record_results(list(results), now=int(self._clock()))

    def close(self) -> None:
        """Close the index."""
        self.index.close()


def skipped_job(guarded: GuardedBatch, clock: Callable[[], str] = utc_now_iso) -> SubmittedJob:
    """The ledger entry of a batch whose every item was skipped (no job was created)."""
    batch = guarded.batch
    return SubmittedJob(
        job_id=f"{SKIPPED_JOB_PREFIX}{uuid.uuid4().hex}",
        job_type=batch.job_type,
        item_count=0,
        source_stream=batch.source_stream,
        batch_sha256=NOTHING_SENT_SHA256,
        submitted_at=clock(),
        skipped_item_count=guarded.skipped,
    )


class GuardedJobSubmitter(JobSubmitter):
    """A `JobSubmitter` that sends only what the guard lets through, and tells the index.

    Background creates go through `submit` too, so the index is written on the creating
    thread before the create's future completes, which is what STATE waits for.
    """

    def __init__(self, *, guard: ResubmitGuard | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.guard = guard
        #: Batches whose every item was submitted within the window: no job created.
        self.skipped_batches = 0
        #: What the guard had skipped when it was closed (the run's report comes after).
        self._closed_skipped = 0
        #: The batch being created (one at a time) and how many POSTs it has sent.
        self._sending: GuardedBatch | None = None
        self._posts_sent = 0

    def reconcile_interrupted(self) -> list[SubmittedJob]:
        """Settle the creates an interrupted run left open; the ledger rows of the jobs
        adopted (items sent again are told on the row of the batch that sends them)."""
        guard = self.guard
        if guard is None:
            return []
        reconciler = IntentReconciler(
            client=self.client,
            grace_seconds=self.grace_seconds,
            first_item_digest=lambda job: guard.first_item_digest(self.client, job),
        )
        adopted = []
        for intent, job_id, reason in guard.reconcile(reconciler):
            if job_id is None:
                continue
            self.known_job_ids.add(job_id)
            adopted.append(SubmittedJob(
                job_id=job_id,
                job_type=intent.job_type,
                item_count=intent.item_count,
                source_stream=intent.source_stream,
                batch_sha256=intent.batch_sha256,
                submitted_at=utc_now_iso(),
                reconciliation=reason,
            ))
        return adopted

    def submit(self, batch: Batch) -> SubmittedJob:
        """Create the job of the batch's items not submitted recently (if any)."""
        return self.submit_guarded(batch)[1]

    def submit_guarded(self, batch: Batch) -> tuple[GuardedBatch, SubmittedJob]:
        """`submit`, also returning how the batch was split."""
        if self.guard is None:
            guarded = GuardedBatch(batch=batch, to_send=batch, digests=[], positions=None)
            return guarded, super().submit(batch)
        guarded = self.guard.split(batch)
        if not guarded.to_send.positions:
            self.skipped_batches += 1
            return guarded, skipped_job(guarded)
        self._sending, self._posts_sent = guarded, 0
        try:
            job = super().submit(guarded.to_send)
        except BaseException as error:
            if self._made_no_job(error):
                self.guard.release(guarded)
            else:
                logger.warning(
                    "The create of %d %s items may have made a job: the next run looks for "
                    "it before sending them again", len(guarded.digests), batch.job_type,
                )
            raise
        finally:
            self._sending = None
        self.guard.confirm(guarded, job)
        return guarded, replace(
            job, skipped_item_count=guarded.skipped, reconciliation=guarded.resent_because
        )

    def _before_send(self, batch: Batch, batch_sha256: str) -> None:
        """Write the intent before the POST leaves (again before a resend)."""
        if self.guard is not None and self._sending is not None:
            self.guard.mark_sent(self._sending, batch_sha256)
            self._posts_sent += 1

    def _made_no_job(self, error: BaseException) -> bool:
        """Whether a failed create certainly made no job: no POST left, or the only one
        was refused (4xx, 429) or never reached GTMCLI. Anything else may have made one
        (an ambiguous failure, a signal mid-call, an attempt before a resend)."""
        if self._posts_sent == 0:
            return True
        cause = error.__cause__ if isinstance(error, SubmissionFailedError) else None
        return self._posts_sent == 1 and isinstance(
            cause, GTMCLIFatalError | GTMCLIRetriesExhaustedError | GTMCLIRetriableError
        )

    @property
    def skipped_items(self) -> int:
        """Items not sent because they were submitted within the window."""
        return self.guard.skipped_items if self.guard is not None else self._closed_skipped

    def close(self) -> None:
        """Stop background creates, then close the index."""
        super().close()
        if self.guard is not None:
            self._closed_skipped = self.guard.skipped_items
            self.guard.close()
            self.guard = None


def enriched_rows(
    guarded: GuardedBatch, fetched: Iterator[tuple[int, dict[str, Any]]],
    encode: Callable[[dict[str, Any]], bytes], keep: Callable[[list[tuple[bytes, bytes]]], None],
    decode: Callable[[bytes], dict[str, Any]],
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(batch position, `gtmcli_*` fields) of every item: kept results, then fetched ones.

    Fetched results are handed to `keep` (with their digests) once all are read. A
    validate result is kept without its email, which is the item itself: the index
    holds no address the user sent.
    """
    for position, result, key in guarded.known_results:
        fields = decode(result)
        if type(key) is str:
            fields[VALIDATED_EMAIL] = key
        yield position, fields
    validating = guarded.batch.job_type == "validate"
    kept: list[tuple[bytes, bytes]] = []
    for send_position, fields in fetched:
        if guarded.digests:
            stored = (
                {name: value for name, value in fields.items() if name != VALIDATED_EMAIL}
                if validating
                else fields
            )
            kept.append((guarded.digests[send_position], encode(stored)))
        yield guarded.batch_position(send_position), fields
    if kept:
        keep(kept)
