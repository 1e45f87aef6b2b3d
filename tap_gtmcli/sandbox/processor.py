"""The background processor: computes the result rows of queued jobs, in item order.

`POST /v1/jobs` only stores the items; this thread (one per server) then takes the
oldest job whose rows are not all computed, decodes BATCH_CHUNKS item chunks at a time,
computes and encodes their rows and stores them as result chunks, advancing the job's
`computed` count. A job's visible progress never runs ahead of that count. After a
restart on the same database, computation resumes at the first missing chunk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import msgspec

from tap_gtmcli.sandbox.clock import SandboxClock
from tap_gtmcli.sandbox.outcomes import encode_rows
from tap_gtmcli.sandbox.store import CHUNK_ROWS, JobRecord, JobStore, chunk_rows

logger = logging.getLogger(__name__)

# Chunks computed per transaction: ~1,000 rows, a few milliseconds of work.
BATCH_CHUNKS = 10


class JobProcessor:
    """One thread that computes rows for every job that still lacks some."""

    def __init__(
        self,
        store: JobStore,
        clock: SandboxClock,
        on_progress: Callable[[JobRecord], None] = lambda record: None,
    ) -> None:
        self._store = store
        self._clock = clock
        # Called when a job's end becomes known (all rows, or a failure's rows, done).
        self._on_progress = on_progress
        self._condition = threading.Condition()
        self._work = True  # look at the store first: a restart may have left work
        self._busy = False
        self._paused = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sandbox-processor", daemon=True)

    def start(self) -> None:
        """Start computing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the batch in hand; uncomputed rows wait for the next start."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def notify(self) -> None:
        """A job was queued: look for work."""
        with self._condition:
            self._work = True
            self._condition.notify_all()

    def pause(self) -> None:
        """Test hook: stop taking batches until `resume`."""
        with self._condition:
            self._paused = True

    def resume(self) -> None:
        """Test hook: undo `pause`."""
        with self._condition:
            self._paused = False
            self._condition.notify_all()

    def wait_until_idle(self, timeout: float) -> bool:
        """Block until no job waits for rows; False if `timeout` passed first."""
        with self._condition:
            return self._condition.wait_for(
                lambda: not self._work and not self._busy, timeout=timeout
            )

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(
                    lambda: self._stopping or (self._work and not self._paused)
                )
                if self._stopping:
                    return
                self._work = False
                self._busy = True
            try:
                self._drain()
            except Exception:
                logger.exception("the sandbox processor failed; queued jobs wait")
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    def _interrupted(self) -> bool:
        with self._condition:
            if self._stopping or self._paused:
                self._work = True
                return True
            return False

    def _drain(self) -> None:
        while not self._interrupted():
            record = self._store.next_uncomputed()
            if record is None:
                return
            while record is not None and record.computed_at is None:
                if self._interrupted():
                    return
                record = self._compute_batch(record)

    def _compute_batch(self, record: JobRecord) -> JobRecord | None:
        first_chunk = record.computed // CHUNK_ROWS
        bodies = self._store.item_chunks(record.seq, first_chunk, first_chunk + BATCH_CHUNKS)
        if not bodies:
            return None  # deleted meanwhile
        rows: list[bytes] = []
        costs: list[float] = []
        for body in bodies:
            chunk_rows_, chunk_costs = encode_rows(record.type, msgspec.json.decode(body))
            rows += chunk_rows_
            costs += chunk_costs
        computed = record.computed + len(rows)
        fail_after = record.timeline.fail_after
        fail_cost = None
        if (
            record.fail_cost is None and fail_after is not None
            and record.computed <= fail_after <= computed
        ):
            # Every row before the planned failure exists now: its charge is known.
            fail_cost = record.cost + float(sum(costs[: fail_after - record.computed]))
        updated = self._store.add_computed(
            record, list(chunk_rows(record.seq, first_chunk, rows, costs)), computed=computed,
            cost=record.cost + float(sum(costs)), now=self._clock.now(), fail_cost=fail_cost,
        )
        if updated is not None and (
            updated.computed_at is not None or fail_cost is not None
        ):
            self._on_progress(updated)
        return updated
