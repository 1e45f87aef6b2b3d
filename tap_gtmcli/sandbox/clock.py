"""The sandbox's notion of now: wall time, which tests may push forward."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class SandboxClock:
    """Wall-clock seconds plus an offset that only ever grows."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> float:
        """Current sandbox time in Unix seconds."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        """Jump forward, so tests need not sleep through start delays and processing."""
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        with self._lock:
            self._offset += seconds
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def on_advance(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every jump, so sleepers can recompute their deadlines."""
        with self._lock:
            self._listeners.append(listener)
