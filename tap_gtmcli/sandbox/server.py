"""SandboxServer: the sandbox in a background thread, with in-process test controls."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from tap_gtmcli.sandbox.app import SandboxApp
from tap_gtmcli.sandbox.clock import SandboxClock
from tap_gtmcli.sandbox.config import SandboxConfig
from tap_gtmcli.sandbox.errors import ApiError
from tap_gtmcli.sandbox.faults import FaultInjector, FaultRule, FaultSettings
from tap_gtmcli.sandbox.http_transport import SandboxHTTPServer
from tap_gtmcli.sandbox.jobs import JobService
from tap_gtmcli.sandbox.processor import JobProcessor
from tap_gtmcli.sandbox.stats import SandboxStats
from tap_gtmcli.sandbox.store import JobStore
from tap_gtmcli.sandbox.webhooks import WebhookDispatcher


class SandboxServer:
    """A GTMCLI-compatible server on 127.0.0.1, controllable from the test process.

    >>> with SandboxServer(SandboxConfig(start_delay=0, processing_rate=0)) as sandbox:
    ...     job_ids = sandbox.seed_jobs("validate", 10)
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.clock = SandboxClock()
        self._stopping = threading.Event()
        self._stats = SandboxStats()
        self._store = JobStore(self.config.db_path)
        self._faults = FaultInjector(FaultSettings(
            error_share=self.config.error_share,
            drop_share=self.config.drop_share,
            truncate_share=self.config.truncate_share,
            latency_ms=self.config.latency_ms,
            fault_seed=self.config.fault_seed,
        ))
        self._processor = JobProcessor(
            self._store, self.clock, on_progress=self._schedule_webhook
        )
        self._jobs = JobService(
            self.config, self._store, self.clock, on_schedule=self._schedule_webhook,
            on_queued=self._processor.notify,
        )
        self._webhooks = WebhookDispatcher(
            store=self._store, clock=self.clock, stats=self._stats, view_of=self._jobs.view_of,
            timeout=self.config.webhook_timeout,
            backoff=self.config.webhook_backoff,
            retries=self.config.webhook_retries,
        )
        self._app = SandboxApp(
            config=self.config, jobs=self._jobs, faults=self._faults, stats=self._stats,
            clock=self.clock, stopping=self._stopping,
        )
        self._httpd: SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _schedule_webhook(self, record: Any) -> None:
        self._webhooks.schedule(record)

    # Lifecycle

    def start(self) -> SandboxServer:
        """Bind 127.0.0.1 (port 0 picks a free one) and serve from a background thread."""
        if self._httpd is not None:
            raise RuntimeError("the sandbox is already running")
        self._httpd = SandboxHTTPServer((self.config.bind_host, self.config.port), self._app)
        self._webhooks.start()
        self._processor.start()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="gtmcli-sandbox",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection, finish webhooks and close the database."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.close_connections()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._processor.stop()
        self._webhooks.stop()
        self._store.close()
        self._httpd = None
        self._thread = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port."""
        if self._httpd is None:
            raise RuntimeError("the sandbox is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:8765`."""
        return f"http://127.0.0.1:{self.port}"

    # The same operations as the /_sandbox/ routes

    def stats(self) -> dict[str, Any]:
        """Request counts per route, fault and webhook counters, and `credits_balance`."""
        return self._app.stats()

    def reset_stats(self) -> None:
        """Zero every counter."""
        self._stats.reset()

    def credits_balance(self) -> float:
        """Credits left (reservations of jobs still computing are held back)."""
        return self._jobs.credits_balance()

    def wait_until_processed(self, timeout: float = 30.0) -> None:
        """Block until the background processor has computed every queued job's rows.

        Raises TimeoutError if work remains after `timeout` seconds.
        """
        if not self._processor.wait_until_idle(timeout):
            raise TimeoutError(f"the sandbox processor still had work after {timeout:g} s")

    def pause_processing(self) -> None:
        """Test hook: the background processor stops after its current batch."""
        self._processor.pause()

    def resume_processing(self) -> None:
        """Test hook: undo `pause_processing`."""
        self._processor.resume()

    def seed_jobs(
        self, job_type: str, count: int, jobs: int = 1, status: str = "completed",
        seed: str = "seed", *, ids: list[str] | None = None,
    ) -> list[str]:
        """Create `jobs` jobs of `count` generated items each (free); returns their ids.

        status: "completed" (done at once), "failed" (failed at once, part done) or
        "pending" (follows the configured start delay and processing rate).
        """
        return self._jobs.seed_jobs(job_type, count, jobs, status, seed, ids=ids)

    def create_job(
        self, job_type: str, items: list[dict[str, Any]], webhook_url: str | None = None
    ) -> dict[str, Any]:
        """Create a job as `POST /v1/jobs` would (charged); returns the pending job object."""
        self._jobs.check_items(job_type, items)
        return self._jobs.create_job(job_type, items, webhook_url)

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job object as the API shows it now (ApiError 404 if unknown)."""
        return self._jobs.job_view(job_id)

    def job_items(self, job_id: str) -> list[dict[str, Any]]:
        """The items exactly as submitted."""
        return self._jobs.job_items(job_id)

    def delete_job(self, job_id: str) -> bool:
        """Make a job vanish (404 afterwards); False if it did not exist."""
        return self._jobs.delete_job(job_id)

    def fail_job(self, job_id: str, error: str | None = None) -> dict[str, Any]:
        """Fail a job now, keeping the items done so far; returns its job object."""
        return self._jobs.fail_job(job_id, error)

    def add_fault_rules(self, rules: list[dict[str, Any] | FaultRule]) -> None:
        """Append scripted fault rules (see FaultRule), consumed in order."""
        self._faults.add_rules(list(rules))

    def clear_fault_rules(self) -> None:
        """Drop every scripted rule not yet consumed."""
        self._faults.clear_rules()

    def set_faults(self, **settings: Any) -> None:
        """Change error_share, drop_share, truncate_share, latency_ms or fault_seed."""
        self._faults.configure(**settings)

    def set_quirks(self, *names: str) -> None:
        """Answer like an untrustworthy server (see quirks.QUIRKS); none: healthy."""
        self._app.quirks.replace(list(names))

    def faults(self) -> dict[str, Any]:
        """Current fault settings and the scripted rules still waiting."""
        return self._faults.describe()

    def advance_clock(self, seconds: float) -> None:
        """Move sandbox time forward: jobs progress, due webhooks fire."""
        self.clock.advance(seconds)


__all__ = ["ApiError", "SandboxServer"]
