"""Fast Singer output: messages kept as the dicts they were read as, written with msgspec.

Re-encoding the decoded dict keeps a passthrough message equal in content (msgspec
reads numbers as `Decimal`, so they are written back digit for digit). Output is
buffered and flushed at each STATE and at the end instead of after every message:
flushing per record would cost a system call each, and nothing downstream acts on a
record before the STATE that covers it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import IO, Any

from singer_sdk.contrib.msgspec import MsgSpecReader, MsgSpecWriter
from singer_sdk.singerlib import Message

__all__ = ["BufferedMsgSpecWriter", "MsgSpecReader", "RawMessage"]


@dataclass(slots=True)
class RawMessage(Message):
    """A Singer message carried as its JSON dict, written back exactly as given."""

    body: dict[str, Any]

    def __post_init__(self) -> None:
        self.type = self.body.get("type")  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """The message dict itself (no copy)."""
        return self.body


class BufferedMsgSpecWriter(MsgSpecWriter):
    """msgspec Singer writer that flushes on STATE and on request only."""

    def __init__(self, output: IO[bytes] | None = None) -> None:
        super().__init__()
        self._output = output

    @property
    def output(self) -> IO[bytes]:
        """Where messages go: the given stream, else standard output at write time."""
        return self._output if self._output is not None else sys.stdout.buffer

    def write_message(self, message: Message) -> None:
        """Write one message; flush when it is a STATE."""
        output = self.output
        output.write(self.format_message(message))
        if message.type == "STATE":
            output.flush()

    def flush(self) -> None:
        """Push buffered messages downstream."""
        self.output.flush()
