"""The tap's Singer output: msgspec-encoded, written in blocks and flushed at each STATE.

A write and flush per record is a system call per record (stdout is unbuffered under
PYTHONUNBUFFERED, as many orchestrators set it). A target acts on nothing before the
STATE that covers it, and a killed tap loses only records that no STATE had claimed.
"""

from __future__ import annotations

import atexit
import sys

from singer_sdk.singerlib import Message
from typing_extensions import override

from tap_gtmcli.singer_io import BufferedMsgSpecWriter

#: Records are handed to stdout in blocks of about this many bytes.
BLOCK_BYTES = 256 * 1024


class TapMessageWriter(BufferedMsgSpecWriter):
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

    @override
    def flush(self) -> None:
        if not self._pending:
            return
        if hasattr(sys.stdout, "buffer"):
            self.output.write(self._pending)
            self.output.flush()
        else:  # a text-only stdout, as tests redirect it
            sys.stdout.write(self._pending.decode())
            sys.stdout.flush()
        self._pending.clear()
