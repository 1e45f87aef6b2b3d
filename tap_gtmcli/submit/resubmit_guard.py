"""Pay once per contact: a batch's items submitted within `resubmit_after_days` are not sent.

The rule: an item counts as submitted when GTMCLI confirms the job holding it, and the
index is written right then, before the job is handed back, so before the STATE behind
it can be released. A kill between the create and that write re-sends at most that one
batch on the rerun. A create that fails releases the batch's claims. Skipped records
still pass through; in enrich mode they get the result the index kept for them.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, cast

from tap_gtmcli.api.errors import SubmissionIndexError
from tap_gtmcli.api.timestamps import utc_now_iso
from tap_gtmcli.submit.batches import Batch
from tap_gtmcli.submit.items import ItemKey
from tap_gtmcli.submit.job_creation import JobSubmitter, SubmittedJob
from tap_gtmcli.submit.settings import SubmitSettings
from tap_gtmcli.submit.submission_index import (
    DIGEST_BYTES,
    Known,
    SubmissionIndex,
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
        self.skipped_items = 0

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
        """Claim the batch's items; those the index knows are skipped."""
        keys = list(batch.positions)
        job_type = batch.job_type
        digests = self.digests(job_type, keys)
        known: Known = self.index.claim(
            digests,
            now=int(self._clock()),
            since=self.window_start(),
            need_results=self.need_results,
        )
        if not known:
            return GuardedBatch(batch=batch, to_send=batch, digests=digests, positions=None)
        to_send = Batch(
            number=batch.number,
            source_stream=batch.source_stream,
            job_type=job_type,
            first_seq=batch.first_seq,
        )
        guarded = GuardedBatch(batch=batch, to_send=to_send, digests=[], positions=[])
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

    def confirm(self, guarded: GuardedBatch, job: SubmittedJob) -> None:
        """GTMCLI confirmed the job: its items count as submitted from now."""
        try:
            self.index.record(
                guarded.digests, job_id=job.job_id, job_type=job.job_type,
                now=int(self._clock()),
            )
        except SubmissionIndexError as error:
            msg = (
                f"GTMCLI created {job.job_id} ({len(guarded.digests)} items), but {error} "
                "A rerun from the last STATE sends those items again."
            )
            raise SubmissionIndexError(msg) from error

    def release(self, guarded: GuardedBatch) -> None:
        """The create failed: free the claims (a lost connection frees them anyway)."""
        try:
            self.index.release(guarded.digests)
        except SubmissionIndexError as error:
            logger.warning("%s", error)

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
        try:
            job = super().submit(guarded.to_send)
        except BaseException:
            self.guard.release(guarded)
            raise
        self.guard.confirm(guarded, job)
        return guarded, replace(job, skipped_item_count=guarded.skipped)

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
