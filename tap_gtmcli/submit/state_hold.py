"""Holds STATE messages until every record read before them has been submitted.

A STATE released early would let a rerun skip records that never reached GTMCLI, so
each STATE waits until no open batch holds a record older than it. Only the latest
STATE per gap between batch starts is kept: the ones before it would be released at
the same moment and are superseded, so memory stays bounded by the open batches.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

StateMessage = TypeVar("StateMessage")


class StateHold(Generic[StateMessage]):
    """Held STATE messages with the sequence number at which each was read."""

    def __init__(self) -> None:
        self._held: deque[tuple[int, StateMessage]] = deque()

    def hold(self, seq: int, message: StateMessage, newest_batch_start: int | None) -> None:
        """Hold a STATE read at `seq`; `newest_batch_start` is the latest open batch's start."""
        if self._held and (newest_batch_start is None or self._held[-1][0] > newest_batch_start):
            self._held.pop()
        self._held.append((seq, message))

    def release(self, oldest_pending_seq: int | None) -> StateMessage | None:
        """The latest held STATE that no pending record precedes, dropping older ones."""
        released: StateMessage | None = None
        while self._held and (
            oldest_pending_seq is None or self._held[0][0] < oldest_pending_seq
        ):
            released = self._held.popleft()[1]
        return released

    def __len__(self) -> int:
        return len(self._held)
