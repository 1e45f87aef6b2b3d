"""The tap's Singer output: msgspec-encoded, written in blocks and flushed at each STATE.

A write and flush per record is a system call per record (stdout is unbuffered under
PYTHONUNBUFFERED, as many orchestrators set it). A target acts on nothing before the
STATE that covers it, and a killed tap loses only records that no STATE had claimed.
"""

from __future__ import annotations

import atexit
import sys

from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.singerlib import Message
from typing_extensions import override

#: Records are handed to stdout in blocks of about this many bytes.
BLOCK_BYTES = 256 * 1024


class TapMessageWriter(MsgSpecWriter):
    """Collects RECORD lines into blocks; any other message flushes them with it."""

    def __init__(self) -> None:
        super().__init__()
        self._pending = bytearray()
        atexit.register(self.flush)

    @override
    def write_message(self, message: Message) -> None:
        self._pending += self.format_message(message)
        if message.type != "RECORD" or len(self._pending) >= BLOCK_BYTES:
            self.flush()

    def write_record_lines(self, lines: bytes) -> None:
        """Append RECORD lines already encoded (a whole page of results at once)."""
        self._pending += lines
        if len(self._pending) >= BLOCK_BYTES:
            self.flush()

    def flush(self) -> None:
        """Hand what is pending to stdout."""
        if not self._pending:
            return
        if hasattr(sys.stdout, "buffer"):
            sys.stdout.buffer.write(self._pending)
            sys.stdout.buffer.flush()
        else:  # a text-only stdout, as tests redirect it
            sys.stdout.write(self._pending.decode())
            sys.stdout.flush()
        self._pending.clear()
