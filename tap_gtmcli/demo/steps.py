"""Named demo steps: progress lines while they run, and one clear error when one fails."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_TAIL_LINES = 25


class StepFailedError(Exception):
    """A step of the demo failed; the message names the step and says where to look."""

    def __init__(self, step: str, reason: str, log_path: Path | None = None) -> None:
        self.step = step
        self.reason = reason
        self.log_path = log_path
        where = f" (full log: {log_path})" if log_path else ""
        super().__init__(f"step '{step}' failed: {reason}{where}")

    def report(self, what: str) -> None:
        """Print the end of the step's log, then `what failed: ...`, to stderr."""
        tail = self.log_tail()
        if tail:
            print(f"\n--- last lines of {self.log_path} ---\n{tail}", file=sys.stderr)
        print(f"\n{what} failed: {self}", file=sys.stderr)

    def log_tail(self) -> str:
        """The last lines of the step's log, to show under the error."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:])


def say(message: str) -> None:
    """One progress line, flushed at once so it shows while a slow step runs."""
    print(message, flush=True)


@contextmanager
def step(name: str, number: int, total: int) -> Iterator[None]:
    """Announce a step, time it, and turn any unexpected error into StepFailedError."""
    say(f"[{number}/{total}] {name} ...")
    started = time.monotonic()
    try:
        yield
    except StepFailedError:
        raise
    except Exception as error:  # any failure inside a step is reported as that step's
        raise StepFailedError(name, f"{type(error).__name__}: {error}") from error
    say(f"      done in {time.monotonic() - started:.1f}s")
