"""A small GTMCLI HTTP client for the mapper and target: auth, timeouts and the shared
retry policy around one `requests.Session`.

The tap's streams use the SDK's request machinery with the same policy (`errors`,
`retry`); this client serves the code that is not a stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlparse

import backoff
import requests
import urllib3.exceptions
from backoff.types import Details

from tap_gtmcli.api.errors import (
    GTMCLIAmbiguousCreateError,
    GTMCLIRetriableError,
    GTMCLIRetriesExhaustedError,
    decode_json,
    describe_transport_error,
    error_code,
    raise_for_response,
)
from tap_gtmcli.api.paging import iterate_pages
from tap_gtmcli.api.paths import job_path
from tap_gtmcli.api.retry import (
    SLEEP_IN_ON_BACKOFF,
    TRANSIENT_EXCEPTIONS,
    RetryPolicy,
    parse_retry_after,
)

DEFAULT_API_URL = "https://api.gtmcli.com"
USER_AGENT = "tap-gtmcli/0.1"
#: The job statuses that never change again.
FINISHED_STATUSES = frozenset({"completed", "failed"})
#: The documented statuses of a job still at work.
OPEN_STATUSES = frozenset({"pending", "processing"})

logger = logging.getLogger("tap_gtmcli.api.client")


def _never_reached_server(error: BaseException) -> bool:
    """True when the request certainly did not reach GTMCLI (so a retry cannot double it)."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(error, requests.exceptions.ConnectionError):
        reason = error.args[0] if error.args else None
        inner = getattr(reason, "reason", reason)
        return isinstance(inner, urllib3.exceptions.NewConnectionError)
    return False


#: 5xx statuses a gateway answers for a backend that may still be working on the call.
_GATEWAY_STATUSES = (502, 504)
#: What `error_code` says when the body carries no API error code.
_NOT_API_CODES = ("non-JSON body", "no error code")


def _api_answered(error: BaseException) -> bool:
    """True when the API itself answered a 5xx with its error body (not a gateway)."""
    if not isinstance(error, GTMCLIRetriableError) or error.response is None:
        return False
    status = error.status or 0
    return (
        status >= 500
        and status not in _GATEWAY_STATUSES
        and error_code(error.response) not in _NOT_API_CODES
    )


class GTMCLIClient:
    """Requests to one GTMCLI base URL with one key."""

    def __init__(
        self,
        *,
        api_url: str,
        api_key: str,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.session = session or requests.Session()
        self.session.headers.update(
            {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}
        )
        self._sleep = sleep
        #: Server clock minus ours, in seconds, from the `Date` of the latest answer
        #: (None until one came). `Date` has 1-second resolution, truncated, so this
        #: underestimates by up to a second plus the answer's transit time.
        self.server_clock_offset: float | None = None
        #: True once the server has answered anything (see refused_before_any_answer).
        self.answered = False

    def close(self) -> None:
        """Release the connection pool."""
        self.session.close()

    def _send_once(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.session.request(
            method, f"{self.api_url}{path}", timeout=self.timeout, **kwargs
        )
        self.answered = True
        self._observe_clock(response.headers.get("Date"))
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise_for_response(response, retry_after)
        return decode_json(response)

    def _observe_clock(self, date: str | None) -> None:
        if not date:
            return
        try:
            server_now = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return
        self.server_clock_offset = server_now - time.time()

    def request_json(
        self,
        method: str,
        path: str,
        *,
        can_retry: Callable[[BaseException], bool] = lambda _error: True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Send a request, retrying transient failures that `can_retry` allows."""

        def wait_before_retry(details: Details) -> None:
            error, retry_number = details["exception"], details["tries"]
            wait = self.retry.wait_seconds(retry_number, error)
            logger.warning(
                "%s %s failed (%s); retry %d of %d in %.2f s",
                method, path, _short(error), retry_number, self.retry.max_retries, wait,
            )
            self._sleep(wait)

        def fail_when_exhausted(details: Details) -> None:
            error = details["exception"]
            # backoff gives up on a failure `can_retry` refuses, or when tries run out:
            # only the latter gets its own error.
            if can_retry(error):
                host = urlparse(self.api_url).netloc
                msg = (
                    f"{method} {path} on {host} failed after {details['tries']} attempt(s); "
                    f"last error: {_short(error)}"
                )
                raise GTMCLIRetriesExhaustedError(msg) from error

        send = backoff.on_exception(
            **SLEEP_IN_ON_BACKOFF,
            exception=TRANSIENT_EXCEPTIONS,
            max_tries=self.retry.max_tries,
            giveup=lambda error: not can_retry(error) or refused_before_any_answer(
                error, self.answered),
            on_backoff=wait_before_retry,
            on_giveup=fail_when_exhausted,
            logger=None,
        )(self._send_once)
        return send(method, path, **kwargs)

    def create_job(
        self,
        job_type: str,
        items: list[dict[str, str]],
        webhook_url: str | None = None,
        *,
        body_bytes: bytes | None = None,
    ) -> dict[str, Any]:
        """POST /v1/jobs once, retrying only failures that certainly created nothing.

        Creation has no idempotency key, so a timeout or a 5xx after sending raises
        `GTMCLIAmbiguousCreateError` for the caller to reconcile against the job list.
        `body_bytes`, when given, is the already-encoded JSON body sent instead of one
        built from the other arguments (a 100,000-item body is costly to encode twice).
        """
        payload: dict[str, Any]
        if body_bytes is not None:
            payload = {
                "data": body_bytes,
                "headers": {"Content-Type": "application/json"},
            }
        else:
            body: dict[str, Any] = {"type": job_type, "data": items}
            if webhook_url:
                body["webhook_url"] = webhook_url
            payload = {"json": body}
        started_at = time.time()

        def certainly_not_created(error: BaseException) -> bool:
            if isinstance(error, GTMCLIRetriableError) and error.status == 429:
                return True
            if _never_reached_server(error):
                return True
            raise GTMCLIAmbiguousCreateError(
                f"POST /v1/jobs may or may not have created a job: {_short(error)}",
                started_at,
                api_answered=_api_answered(error),
            ) from error

        return self.request_json("POST", "/v1/jobs", can_retry=certainly_not_created, **payload)

    def get_job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}."""
        return self.request_json("GET", job_path(job_id))

    def list_jobs(self) -> Iterator[dict[str, Any]]:
        """GET /v1/jobs, newest first, following pagination when the answer has it."""
        for body in iterate_pages(self.list_jobs_page):
            yield from body.get("jobs") or []

    def list_jobs_page(self, page: int = 1) -> dict[str, Any]:
        """One answer of GET /v1/jobs (the whole list when the API does not paginate)."""
        return self.request_json("GET", "/v1/jobs", params={"page": page})

    def get_results_page(self, job_id: str, page: int, per_page: int) -> dict[str, Any]:
        """One page of GET /v1/jobs/{id}/results."""
        return self.request_json(
            "GET", job_path(job_id, "results"), params={"page": page, "per_page": per_page}
        )


def _short(error: BaseException) -> str:
    """A one-line description of a transport or API error, without URLs or bodies."""
    status = getattr(error, "status", None)
    if isinstance(error, GTMCLIRetriableError):
        return str(error)
    if status:
        return f"status {status}"
    return describe_transport_error(error)


def refused_before_any_answer(error: BaseException, answered: bool) -> bool:
    """A connection refused (or a TLS failure) before the server ever answered: a wrong
    `api_url` or a server not running, not a blip; retrying would only delay the error.
    Once the server has answered, a refusal is a restart and is retried."""
    if isinstance(error, requests.exceptions.SSLError):
        return True
    return not answered and _never_reached_server(error)
