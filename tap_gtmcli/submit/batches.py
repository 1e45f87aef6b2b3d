"""Batches of distinct job items, one open batch per (source stream, job type).

Batching per source stream keeps each ledger row's `source_stream` exact, so the
warehouse can join a job back to the stream its items came from.
"""

from __future__ import annotations

from tap_gtmcli.submit.items import ItemKey, item_payload


class Batch:
    """The distinct items of one future job, in first-seen order."""

    def __init__(self, *, number: int, source_stream: str, job_type: str, first_seq: int) -> None:
        self.number = number
        self.source_stream = source_stream
        self.job_type = job_type
        #: Message sequence number of the first record in the batch: a STATE read before
        #: it does not depend on this batch.
        self.first_seq = first_seq
        self.positions: dict[ItemKey, int] = {}

    def __len__(self) -> int:
        return len(self.positions)

    def payloads(self) -> list[dict[str, str]]:
        """The items as sent to GTMCLI, in position order."""
        return [item_payload(key) for key in self.positions]


class OpenBatches:
    """The batches still being filled."""

    def __init__(self, *, batch_size: int) -> None:
        self.batch_size = batch_size
        self._open: dict[tuple[str, str], Batch] = {}
        self._count = 0

    def add(self, source_stream: str, job_type: str, key: ItemKey, seq: int) -> tuple[Batch, int]:
        """Add an item to its open batch (opening one if needed): (batch, position)."""
        batch = self._open.get((source_stream, job_type))
        if batch is None:
            self._count += 1
            batch = self._open[source_stream, job_type] = Batch(
                number=self._count, source_stream=source_stream, job_type=job_type, first_seq=seq
            )
        positions = batch.positions
        position = positions.get(key)
        if position is None:
            position = positions[key] = len(positions)
        return batch, position

    def close(self, batch: Batch) -> None:
        """Stop filling a batch (it is about to be submitted)."""
        self._open.pop((batch.source_stream, batch.job_type), None)

    def of_stream(self, source_stream: str) -> list[Batch]:
        """The open batches of one source stream."""
        return [batch for batch in self._open.values() if batch.source_stream == source_stream]

    def all(self) -> list[Batch]:
        """Every open batch, oldest first."""
        return sorted(self._open.values(), key=lambda batch: batch.first_seq)

    def oldest_seq(self) -> int | None:
        """The sequence number of the oldest record not yet submitted, if any."""
        return min((batch.first_seq for batch in self._open.values()), default=None)

    def newest_seq(self) -> int | None:
        """The sequence number at which the most recently opened batch started."""
        return max((batch.first_seq for batch in self._open.values()), default=None)
