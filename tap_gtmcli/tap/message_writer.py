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

from tap_gtmcli.api.stop_signals import signals_held

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
        """Write RECORD lines already encoded (a whole page of results at once)."""
        if self._pending or len(lines) < BLOCK_BYTES:
            self._pending += lines
            if len(self._pending) >= BLOCK_BYTES:
                self.flush()
            return
        self._write(lines)  # a block of its own: no copy into the pending buffer

    def flush(self) -> None:
        """Hand what is pending to stdout."""
        if not self._pending:
            return
        self._write(self._pending)
        self._pending.clear()

    @staticmethod
    def _write(data: bytes | bytearray) -> None:
        # SIGINT/SIGTERM wait until the block is written: a stop never cuts a line.
        with signals_held():
            TapMessageWriter._write_now(data)

    @staticmethod
    def _write_now(data: bytes | bytearray) -> None:
        if hasattr(sys.stdout, "buffer"):
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:  # a text-only stdout, as tests redirect it
            sys.stdout.write(data.decode())
            sys.stdout.flush()
