"""SIGINT and SIGTERM turned into a clean stop, at a line boundary, in all three plugins.

The SDK's handler calls `sys.exit(0)` wherever the main thread is: inside a write to a
slow loader's pipe that cut a RECORD in half, then wrote a STATE after it, and exited 0.
Here the handler only notes the signal. The main thread stops at the next point where
nothing is half-written: at once when it is waiting (for a page, for stdin, in a sleep:
`interruptible()`), else after the write it is in (`check()`). The plugin then writes the
STATE that covers what went out and exits 128 + the signal (130 for SIGINT, 143 for
SIGTERM). A second signal while the first is still being honoured ends the process at
once with the same code: the user asked twice.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


class RunStopped(BaseException):
    # that no `except Exception` on the way up swallows it.
    """The run was stopped by a signal; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


_STOPPING_SIGNALS = {signal.SIGINT, signal.SIGTERM}
#: How soon a signal that came while a line was being written is delivered again, and
#: for how long at most it is put off so.
REDELIVER_AFTER = 0.02
REDELIVER_FOR = 10.0


class LineBoundary:
    """Puts a stop signal off while the main thread is inside the given writer's code.

    For a plugin that exits from its signal handler (the mapper and the target): the
    handler asks `put_off(frame)` first. Inside a write, the signal is sent again a
    moment later (`REDELIVER_AFTER`) and the handler returns, so the line is finished;
    for `REDELIVER_FOR` seconds at most. No cost per line written.
    """

    def __init__(self, writer: object) -> None:
        self._codes = {
            member.__code__ for name in dir(type(writer))
            if callable(member := getattr(type(writer), name, None))
            and hasattr(member, "__code__")
            and member.__module__ == type(writer).__module__
        }
        self._first_put_off: float | None = None

    def put_off(self, signum: int, frame: FrameType | None) -> bool:
        """True when the signal was put off (the handler then returns at once)."""
        writing = False
        while frame is not None:
            if frame.f_code in self._codes:
                writing = True
                break
            frame = frame.f_back
        if not writing:
            return False
        now = time.monotonic()
        if self._first_put_off is None:
            self._first_put_off = now
        if now - self._first_put_off > REDELIVER_FOR:
            return False
        timer = threading.Timer(REDELIVER_AFTER, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return True


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back (delivered on leaving) while output is written, in
    the main thread; a no-op elsewhere or where signals cannot be masked."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
            signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StopSignals:
    """Notes SIGINT/SIGTERM; raises `RunStopped` only where nothing is half-written."""

    def __init__(self, on_stop: Callable[[int], None] = lambda signum: None) -> None:
        self.signum: int | None = None
        self._on_stop = on_stop
        self._interruptible = 0

    @property
    def stopping(self) -> bool:
        """True once a signal came."""
        return self.signum is not None

    def handle(self, signum: int, _frame: FrameType | None = None) -> None:
        """The signal handler (the SDK installs the plugin's `_handle_termination`)."""
        if self.signum is not None:
            os._exit(128 + self.signum)
        self.signum = signum
        self._on_stop(signum)
        if self._interruptible:
            raise RunStopped(signum)

    def check(self) -> None:
        """Raise `RunStopped` if a signal came: call between two writes."""
        if self.signum is not None:
            raise RunStopped(self.signum)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A wait in the main thread during which a signal stops the run at once (no
        output is being written). Elsewhere a no-op: handlers run in the main thread."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.check()
        self._interruptible += 1
        try:
            yield
        finally:
            self._interruptible -= 1
