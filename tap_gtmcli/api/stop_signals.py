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
