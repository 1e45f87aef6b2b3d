"""Webhook delivery: a thread that wakes when jobs end and POSTs their final state.

Each delivery runs on a small worker pool so that a slow receiver delays only its own
job's notification. Failed attempts (non-2xx or no answer within the timeout) are
retried with exponential backoff: base, 2 x base, 4 x base, ...
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from tap_gtmcli.sandbox.clock import SandboxClock
from tap_gtmcli.sandbox.stats import SandboxStats
from tap_gtmcli.sandbox.store import (
    WEBHOOK_ABANDONED,
    WEBHOOK_DELIVERED,
    WEBHOOK_PENDING,
    JobRecord,
    JobStore,
)

logger = logging.getLogger(__name__)

TERMINAL_EVENTS = {"completed": "job.completed", "failed": "job.failed"}
# Webhook targets are the caller's own servers: never route them through an env proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class WebhookDispatcher:
    """Schedules one terminal-event delivery per job with a webhook URL."""

    def __init__(
        self,
        *,
        store: JobStore,
        clock: SandboxClock,
        stats: SandboxStats,
        view_of: Callable[[JobRecord, float], dict[str, Any]],
        timeout: float = 10.0,
        backoff: float = 1.0,
        retries: int = 3,
    ) -> None:
        self._store = store
        self._clock = clock
        self._stats = stats
        self._view_of = view_of
        self._timeout = timeout
        self._backoff = backoff
        self._retries = retries
        self._due: list[tuple[float, int, str]] = []
        self._tiebreak = itertools.count()
        self._wakeup = threading.Condition()
        self._stopping = threading.Event()
        self._in_flight: set[str] = set()
        self._in_flight_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sandbox-webhook")
        self._thread = threading.Thread(
            target=self._run, name="sandbox-webhook-clock", daemon=True
        )
        clock.on_advance(self._nudge)

    def start(self) -> None:
        """Start waking at completion times; jobs from a previous run are rescheduled."""
        for record in self._store.jobs_owing_webhook():
            self.schedule(record)
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling, cut backoff waits short, and wait for deliveries in flight."""
        self._stopping.set()
        self._nudge()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def schedule(self, record: JobRecord) -> None:
        """Deliver the job's terminal event when it ends (now, if it already has).

        A job whose end waits on row computation is scheduled again by the processor.
        """
        if record.webhook_url is None or record.webhook_state != WEBHOOK_PENDING:
            return
        ends_at = record.ends_at()
        if ends_at is None:
            return
        with self._wakeup:
            heapq.heappush(self._due, (ends_at, next(self._tiebreak), record.id))
            self._wakeup.notify()

    def _nudge(self) -> None:
        with self._wakeup:
            self._wakeup.notify()

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._wakeup:
                if not self._due:
                    self._wakeup.wait()
                    continue
                wait = self._due[0][0] - self._clock.now()
                if wait > 0:
                    self._wakeup.wait(wait)
                    continue
                _, _, job_id = heapq.heappop(self._due)
            self._pool.submit(self._deliver, job_id)

    def _deliver(self, job_id: str) -> None:
        # A job can be scheduled more than once (created, computed, failed): one
        # delivery at a time, and each re-reads whether it is still owed.
        with self._in_flight_lock:
            if job_id in self._in_flight:
                return
            self._in_flight.add(job_id)
        try:
            self._deliver_once(job_id)
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(job_id)

    def _deliver_once(self, job_id: str) -> None:
        record = self._store.get_job(job_id)
        if record is None or record.webhook_url is None:
            return
        if record.webhook_state != WEBHOOK_PENDING:
            return
        now = self._clock.now()
        view = self._view_of(record, now)
        event = TERMINAL_EVENTS.get(view["status"])
        if event is None:
            # Its end moved later: look again then (or when its rows are computed).
            ends_at = record.ends_at()
            if ends_at is not None and ends_at > now:
                self.schedule(record)
            return
        payload = msgspec.json.encode({
            "event": event,
            "job_id": view["id"],
            "type": view["type"],
            "status": view["status"],
            "total": view["total"],
            "completed": view["completed"],
            "credits_used": view["credits_used"],
            "completed_at": view["completed_at"],
        })
        for attempt in range(self._retries + 1):
            if attempt and self._stopping.wait(self._backoff * 2 ** (attempt - 1)):
                return
            self._stats.count("webhook_attempts")
            if self._post(record.webhook_url, payload):
                self._stats.count("webhook_deliveries")
                self._store.set_webhook_state(job_id, WEBHOOK_DELIVERED)
                return
        self._stats.count("webhook_failures")
        self._store.set_webhook_state(job_id, WEBHOOK_ABANDONED)

    def _post(self, url: str, payload: bytes) -> bool:
        request = urllib.request.Request(  # noqa: S310 - the client chose this URL
            url,
            data=payload,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "gtmcli-sandbox"},
        )
        try:
            with _OPENER.open(request, timeout=self._timeout) as response:
                response.read()
                status: int = response.status
                return 200 <= status < 300
        except urllib.error.HTTPError as error:
            error.close()
            logger.debug("webhook receiver answered %s", error.code)
            return False
        except (urllib.error.URLError, OSError, ValueError) as error:
            logger.debug("webhook delivery to a client URL failed: %s", error)
            return False
