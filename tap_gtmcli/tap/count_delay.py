"""How long after its start GTMCLI counts a request, learned from the answers as a range.

GTMCLI counts a request when it arrives, which over a slow link can be in a later window
than the one the client saw when it sent it; the rate gate places each start in the
window it will be counted in by this range (`rate_gate.py`).
"""

from __future__ import annotations

from collections import deque

#: Answers the start-to-count delay is learned from: recent ones, so it follows the link.
DELAY_SAMPLES = 200
#: Seconds added at least on each side of the learned delay range: the way to GTMCLI can
#: take a request that much longer or shorter than the answers seen so far showed (a few
#: tens of milliseconds on a busy link); more when recent starts went later than booked.
JITTER = 0.025


class CountDelay:
    """How long after its start GTMCLI counts a request: a range learned from answers."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=DELAY_SAMPLES)
        self._lateness: deque[float] = deque(maxlen=DELAY_SAMPLES)
        self._bounds = (0.0, 0.0)

    def note_lateness(self, seconds: float) -> None:
        """How much later than booked a request actually started (a thread wakes late)."""
        self._lateness.append(seconds)

    def learn(self, *, started: float, answered: float, reset_at: float,
              window_seconds: float | None) -> None:
        # Counted before it was answered, and before the Reset of the window counting it.
        latest = max(0.0, min(answered, reset_at) - started)
        # ... and not before that window opened (once its length is known).
        earliest = max(0.0, reset_at - window_seconds - started) if window_seconds else 0.0
        self._samples.append((earliest, latest))
        # The tightest bounds the answers allow. Each answer bounds its own delay; over
        # many, the largest `earliest` and the smallest `latest` close in on the delay,
        # and cross when delays vary (a loaded link delays some requests on the way):
        # then they span that variation. A start booked ahead can also go late by as
        # much as recent starts did; the range is widened by that, at least JITTER.
        # (Not by how much the answers' latency varies: a server that is slow to build
        # its answers has counted the requests already.)
        earliest = max(sample[0] for sample in self._samples)
        latest = min(sample[1] for sample in self._samples)
        lateness = sorted(self._lateness)
        margin = max(JITTER, lateness[int(len(lateness) * 0.95)] if lateness else 0.0)
        self._bounds = (max(0.0, min(earliest, latest) - margin),
                        max(earliest, latest) + margin)

    def bounds(self) -> tuple[float, float]:
        """(soonest, latest) delay from start to count; (0, 0) before any answer."""
        return self._bounds
