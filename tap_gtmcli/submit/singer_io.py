"""Fast Singer input and output: raw lines in, the same bytes out, output kept in order.

Passthrough messages are written as the exact bytes they were read as, so "unchanged"
holds byte for byte and nothing is re-encoded. The reader decodes each line just far
enough to route it: a RECORD's envelope and the few record fields that make an item, not
the whole record. Output is buffered and flushed at each STATE and at the end: flushing
per record would cost a system call each, and nothing downstream acts on a record before
the STATE that covers it.

A job create may run in the background (`PendingMessage`): what is written after it is
held in memory until the create confirms, so the output is exactly what a blocking
create would have produced, and a failed create discards everything after it. A create
that confirms writes what it held back at once, from the creating thread, so STATE goes
downstream even while upstream sends nothing.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import IO, Any, NoReturn

import msgspec
from singer_sdk.contrib.msgspec import MsgSpecReader, MsgSpecWriter, decoder, encoder
from singer_sdk.singerlib import Message
from singer_sdk.singerlib.encoding.base import GenericSingerReader
from singer_sdk.singerlib.exceptions import InvalidInputLine

__all__ = [
    "BufferedMsgSpecWriter",
    "MsgSpecReader",
    "PendingMessage",
    "RawMessage",
    "SingerLineReader",
]

#: How much output may wait behind unconfirmed creates before reading pauses.
MAX_HELD_BYTES = 64 * 1024 * 1024
#: Writes between checks of whether the oldest background create has finished.
SETTLE_EVERY = 1024
#: The message types the Singer spec gives a `stream`: without one they cannot be routed.
STREAM_MESSAGE_TYPES = frozenset({"RECORD", "SCHEMA", "ACTIVATE_VERSION"})


#: Characters JSON allows raw in strings but that Python's `str.splitlines` (and other
#: Unicode-aware line readers) take for line breaks: escaped so one message stays one line.
_UNICODE_LINE_BREAKS = (
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
)


def serialize_line(body: dict[str, Any]) -> bytes:
    """One message as a JSON line of its own (a new buffer, safe across threads).

    The SDK's `serialize_jsonl` reuses one module-wide buffer, which two writing threads
    would overwrite under each other.
    """
    data = encoder.encode(body)
    for raw, escaped in _UNICODE_LINE_BREAKS:
        if raw in data:
            data = data.replace(raw, escaped)
    return data + b"\n"


@dataclass(slots=True)
class RawMessage(Message):
    """A Singer message carried as its JSON dict, and as its input line when read."""

    body: dict[str, Any]
    #: The exact input line (ending in a newline); written instead of re-encoding `body`.
    line: bytes | None = None

    def __post_init__(self) -> None:
        # The SDK types `type` as its SingerMessageType enum; raw lines keep the str,
        # which the enum (a str subclass) compares equal to.
        self.type = self.body.get("type")  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """The message dict itself (no copy)."""
        return self.body


@dataclass(slots=True)
class PendingMessage(Message):
    """Messages known once a background call completes (e.g. a ledger row)."""

    future: Future[Any]
    render: Callable[[Any], list[dict[str, Any]]]

    def __post_init__(self) -> None:
        self.type = "RECORD"  # type: ignore[assignment]  # str, as RawMessage's

    def resolve(self) -> list[RawMessage]:
        """Wait for the call; raise its error, else return the messages it yields."""
        return [RawMessage(body) for body in self.render(self.future.result())]


class BufferedMsgSpecWriter(MsgSpecWriter):
    """msgspec Singer writer that flushes on STATE and keeps output behind pending calls."""

    def __init__(self, output: IO[bytes] | None = None) -> None:
        super().__init__()
        self._output = output
        # A PendingMessage, then what was written after it, and so on.
        self._held: deque[PendingMessage | bytearray] = deque()
        self._held_bytes = 0
        self._writes = 0
        # Held output is written by the reading thread and, when a create confirms, by
        # the creating thread. Entries leave `_held` only after their bytes are written,
        # so a reader that sees `_held` empty may write without the lock.
        self._lock = threading.RLock()

    # The SDK's writer returns str; this one writes bytes straight to the binary stream.
    def serialize_message(self, message: Message) -> bytes:  # type: ignore[override]
        """A message as its own JSON line."""
        return serialize_line(message.to_dict())

    @property
    def output(self) -> IO[bytes]:
        """Where messages go: the given stream, else standard output at write time."""
        return self._output if self._output is not None else sys.stdout.buffer

    def write_message(self, message: Message) -> None:
        """Write one message (its input line when it has one); flush when it is a STATE."""
        if isinstance(message, PendingMessage):
            with self._lock:
                self._held.append(message)
                self._held.append(bytearray())
            message.future.add_done_callback(self._write_confirmed)
            return
        line = message.line if isinstance(message, RawMessage) else None
        self.write_line(
            line if line is not None else self.format_message(message),
            flush=message.type == "STATE",
        )

    def write_line(self, data: bytes | bytearray, *, flush: bool = False) -> None:
        """Write one serialized message, or hold it behind a pending one."""
        if not self._held:
            output = self._output or sys.stdout.buffer
            output.write(data)
            if flush:
                output.flush()
            return
        with self._lock:
            self._hold(data, flush=flush)

    def _hold(self, data: bytes | bytearray, *, flush: bool) -> None:
        if not self._held:  # the last create confirmed meanwhile
            self.output.write(data)
            if flush:
                self.output.flush()
            return
        segment = self._held[-1]
        assert isinstance(segment, bytearray)
        segment += data
        self._held_bytes += len(data)
        self._writes += 1
        if self._held_bytes > MAX_HELD_BYTES:
            self.settle(wait=True)
        elif self._writes >= SETTLE_EVERY:
            self._writes = 0
            self.settle()

    @property
    def pending(self) -> bool:
        """True while output waits behind a background call."""
        return bool(self._held)

    def settle(self, *, wait: bool = False) -> None:
        """Write what no unfinished call precedes; `wait` for the oldest call first.

        A failed call raises its error and drops everything held after it: a blocking
        call would have stopped the run before any of it was written.
        """
        if wait and self._held:
            head = self._held[0]
            assert isinstance(head, PendingMessage)
            # Waited for outside the lock: its own callback needs the lock to finish.
            concurrent.futures.wait([head.future])
        with self._lock:
            self._settle(raise_failure=True)

    def _write_confirmed(self, _future: Future[Any]) -> None:
        """A create finished: write what it (and any finished after it) held back.

        A failure is left held for the reading thread to raise where the run can stop.
        """
        with self._lock:
            self._settle(raise_failure=False)

    def _settle(self, *, raise_failure: bool) -> None:
        output = self.output
        written = False
        try:
            while self._held:
                head = self._held[0]
                assert isinstance(head, PendingMessage)
                future = head.future
                if not future.done():
                    break
                if not raise_failure and (future.cancelled() or future.exception() is not None):
                    break
                try:
                    messages = head.resolve()
                except BaseException:
                    self._held.clear()
                    self._held_bytes = 0
                    raise
                segment = self._held[1]
                assert isinstance(segment, bytearray)
                for message in messages:
                    output.write(serialize_line(message.to_dict()))
                output.write(segment)
                written = True
                # Removed only once written: see `_lock`.
                self._held.popleft()
                self._held.popleft()
                self._held_bytes -= len(segment)
        finally:
            if written:
                output.flush()

    def drain(self) -> None:
        """Wait for every background call and write everything held."""
        while self._held:
            self.settle(wait=True)

    def flush(self) -> None:
        """Push written messages downstream (held ones stay held)."""
        self.output.flush()


def envelope_decoder(fields_type: type) -> msgspec.json.Decoder[Any]:
    """A decoder of Singer lines into envelopes whose `record` is `fields_type` (or null).

    Unknown record fields are skipped without being built, which is most of the speedup.
    """
    envelope = msgspec.defstruct(
        "Envelope",
        [("type", Any), ("stream", Any, None), ("record", fields_type | None, None)],
    )
    return msgspec.json.Decoder(envelope)


class SingerLineReader(GenericSingerReader[str]):
    """Reads Singer lines as bytes, handing RECORDs to `on_record` with their raw line.

    Other messages (and records whose shape needs the full decode) go to the SDK
    callbacks as dicts; `line` is then the raw line being handled. A line that is not a
    JSON object with a `type` raises `InvalidInputLine` naming its line number, after
    `on_bad_line` has been called.
    """

    default_input = sys.stdin

    def __init__(
        self,
        *,
        envelopes: msgspec.json.Decoder[Any] | None = None,
        on_record: Callable[[Any, bytes], None] | None = None,
        on_bad_line: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.envelopes = envelopes
        self.on_record = on_record
        self.on_bad_line = on_bad_line
        self.line: bytes = b""

    def deserialize_json(self, line: str | bytes) -> dict[str, Any]:
        """Decode one whole line (numbers as `Decimal`, as the SDK reader does)."""
        result = decoder.decode(line)
        if not isinstance(result, dict):
            msg = f"expected a JSON object, got {type(result).__name__}"
            raise msgspec.ValidationError(msg)
        return result

    def process_lines(
        self,
        file_input: IO[str] | None,
        callbacks: dict[str, Callable[[dict[str, Any]], None]],
    ) -> Counter[str]:
        """Route every line; return the count of each message type."""
        stats: Counter[str] = Counter()
        envelopes, on_record = self.envelopes, self.on_record
        number = fast_records = 0
        for raw in _binary_lines(file_input or self.default_input):
            number += 1
            # The last line may lack its newline; a passthrough line must end in one.
            line = raw if raw[-1:] == b"\n" else raw + b"\n"
            if envelopes is not None and on_record is not None:
                try:
                    envelope = envelopes.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    envelope = None
                if (
                    envelope is not None
                    and envelope.type == "RECORD"
                    and type(envelope.stream) is str
                ):
                    self.line = line
                    on_record(envelope, line)
                    fast_records += 1
                    continue
            if not line.strip():
                continue  # a blank line carries no message
            self.line = line
            try:
                message = self.deserialize_json(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                self._bad_line(number, f"not a JSON Singer message ({error})")
            if "type" not in message:
                self._bad_line(number, "a Singer message without a `type`")
            message_type = message["type"]
            callback = callbacks.get(message_type)
            if callback is None:
                self._bad_line(number, f"unknown Singer message type {message_type!r}")
            if message_type in STREAM_MESSAGE_TYPES and not isinstance(
                message.get("stream"), str
            ):
                self._bad_line(number, f"a {message_type} without a `stream` name")
            callback(message)
            stats[message_type] += 1
        stats["RECORD"] += fast_records
        return stats

    def _bad_line(self, number: int, problem: str) -> NoReturn:
        if self.on_bad_line is not None:
            self.on_bad_line()
        msg = f"Input line {number} is {problem}; stopping without reading further"
        raise InvalidInputLine(msg)


def _binary_lines(file_input: IO[str] | IO[bytes]) -> Iterable[bytes]:
    """The lines of a text or binary stream as bytes, reading text streams' buffers."""
    buffer: Iterable[bytes] | None = getattr(file_input, "buffer", None)
    if buffer is not None:
        return buffer
    return (line.encode() if isinstance(line, str) else line for line in file_input)
