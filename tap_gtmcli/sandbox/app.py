"""Request handling independent of the socket: routing, auth, limits, faults, admin.

`SandboxApp.handle` turns a parsed request into a response (or a decision to drop
the connection); the HTTP layer only reads bytes in and writes bytes out.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import msgspec

from tap_gtmcli.sandbox.clock import SandboxClock
from tap_gtmcli.sandbox.config import SandboxConfig
from tap_gtmcli.sandbox.errors import ApiError
from tap_gtmcli.sandbox.faults import PROXY_ERROR_PAGE, FaultInjector, FaultPlan
from tap_gtmcli.sandbox.jobs import JobService
from tap_gtmcli.sandbox.payloads import DEFAULT_PER_PAGE, parse_create_job, parse_paging
from tap_gtmcli.sandbox.quirks import QuirkSet
from tap_gtmcli.sandbox.ratelimit import RateLimiter
from tap_gtmcli.sandbox.stats import SandboxStats

JSON = "application/json"
ADMIN_PREFIX = "/_sandbox/"


@dataclass(frozen=True)
class Request:
    """What the handler read off the wire."""

    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    body: bytes = b""


@dataclass
class Response:
    """What to send back; `drop` closes the connection without sending anything."""

    status: int = 200
    body: bytes = b""
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    #: Seconds between two bytes of the body (a server that drips its answer).
    drip_seconds: float = 0.0


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response."""
    return Response(status, msgspec.json.encode(payload), headers=dict(headers or {}))


def error_response(error: ApiError) -> Response:
    """The documented error body for an ApiError."""
    return json_response(
        error.status, {"error": error.code, "message": error.message}, error.headers
    )


def route_of(method: str, path: str) -> tuple[str, str | None]:
    """The route pattern of an API path and the job id in it, e.g. `GET /v1/jobs/{id}`.

    The id is one path segment, percent-decoded (`a%3Fb` is the id `a?b`)."""
    parts = [unquote(part) for part in path.rstrip("/").split("/")]
    if parts[:3] == ["", "v1", "jobs"]:
        if len(parts) == 3:
            return f"{method} /v1/jobs", None
        if len(parts) == 4 and parts[3]:
            return f"{method} /v1/jobs/{{id}}", parts[3]
        if len(parts) == 5 and parts[3] and parts[4] == "results":
            return f"{method} /v1/jobs/{{id}}/results", parts[3]
    return f"{method} (unmatched)", None


class SandboxApp:
    """The whole API surface; thread-safe, one instance per server."""

    def __init__(
        self,
        *,
        config: SandboxConfig,
        jobs: JobService,
        faults: FaultInjector,
        stats: SandboxStats,
        clock: SandboxClock,
        stopping: threading.Event,
    ) -> None:
        self._config = config
        self._jobs = jobs
        self._faults = faults
        self._stats = stats
        self._clock = clock
        self._stopping = stopping
        #: Set when the server stops: cuts injected waits short.
        self.stopping = stopping
        self._expected_authorization = f"Bearer {config.api_key}".encode()
        self.quirks = QuirkSet(config.quirks)
        rule = config.rate_rule
        self._limiter = RateLimiter(rule, config.retry_after_format, config.rate_algo,
                                    config.rate_headers) if rule else None

    def handle(self, request: Request) -> Response:
        """Answer one request."""
        if request.path.startswith(ADMIN_PREFIX):
            # Test and ops routes: authenticated, but never limited or faulted.
            try:
                self._authenticate(request)
                return self._admin(request)
            except ApiError as error:
                return error_response(error)
        route, job_id = route_of(request.method, request.path)
        self._stats.count_request(route, time.time())
        try:
            return self._answer(request, route, job_id)
        finally:
            self._stats.answered(time.time())

    def _answer(self, request: Request, route: str, job_id: str | None) -> Response:
        if self._faults.latency_seconds:
            self._stopping.wait(self._faults.latency_seconds)
        plan = self._faults.plan(request.method, request.path)
        if plan.action == "drop":
            self._stats.count("dropped")
            return Response(drop=True)
        if plan.action == "error":
            return self._injected_error(plan)
        if plan.action == "redirect":
            self._stats.count("redirected")
            return Response(302, b"", headers={"Location": plan.location})
        if plan.action == "slow":
            self._stats.count("slowed")
            self._stopping.wait(plan.delay)
        response = self._api(request, route, job_id)
        if plan.action == "drop_after":
            self._stats.count("dropped")
            return Response(drop=True)
        if plan.action == "truncate" and response.status == 200:
            self._stats.count("truncated")
            response.body = response.body[: len(response.body) // 2]
        if plan.action == "drip":
            self._stats.count("dripped")
            response.drip_seconds = plan.delay
        return response

    def _injected_error(self, plan: FaultPlan) -> Response:
        if plan.status >= 500:
            self._stats.count("errors_injected")
        if plan.status == 429:
            self._stats.count("rate_limited")
        headers = {"Retry-After": plan.retry_after} if plan.retry_after is not None else {}
        if plan.body == "html":
            return Response(plan.status, PROXY_ERROR_PAGE, "text/html", headers)
        message = "injected fault" if plan.status != 429 else "rate limit exceeded"
        return error_response(ApiError(plan.status, message, headers))

    def _authenticate(self, request: Request) -> None:
        supplied = (request.authorization or "").strip()
        scheme, _, key = supplied.partition(" ")
        normalized = f"Bearer {key.strip()}".encode() if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(normalized, self._expected_authorization):
            # Never echo what was supplied: it may be a real key sent to the wrong place.
            raise ApiError(401, "missing or invalid API key")

    def _api(self, request: Request, route: str, job_id: str | None) -> Response:
        rate_headers: dict[str, str] = {}
        try:
            self._authenticate(request)
            if self._limiter is not None and self._config.limit_job_endpoints:
                # Limits follow real time, which clients sleep by, not the test clock.
                decision = self._limiter.check(self._config.api_key, time.time())
                rate_headers = decision.headers
                if not decision.allowed:
                    self._stats.count("rate_limited")
                    raise ApiError(429, "rate limit exceeded", rate_headers)
            response = self._route(request, route, job_id)
        except ApiError as error:
            response = error_response(error)
        response.headers.update(rate_headers)
        return response

    def _route(self, request: Request, route: str, job_id: str | None) -> Response:
        method = request.method
        if route == "POST /v1/jobs":
            created = parse_create_job(request.body)
            view = self._jobs.create_job(created.type, created.items, created.webhook_url)
            return json_response(self._config.create_status, view)
        if route == "GET /v1/jobs":
            if "list-repeats" in self.quirks:
                asked, _ = parse_paging(request.query, self._config.list_page_size or 10)
                answer = self._jobs.list_views(1, self._config.list_page_size or 10)
                answer.update(page=asked, total_pages=asked + 1)
                return json_response(200, self.quirks.job_list(answer, asked))
            if self._config.list_page_size <= 0:
                return json_response(200, self.quirks.job_list(self._jobs.list_views(), 1))
            page, per_page = parse_paging(request.query, self._config.list_page_size)
            answer = self._jobs.list_views(page, per_page)
            return json_response(200, self.quirks.job_list(answer, page))
        if route == "GET /v1/jobs/{id}" and job_id is not None:
            return json_response(200, self.quirks.job_view(self._jobs.job_view(job_id)))
        if route == "GET /v1/jobs/{id}/results" and job_id is not None:
            page, per_page = parse_paging(request.query, DEFAULT_PER_PAGE)
            body = self._jobs.results_page(job_id, page, per_page)
            if self.quirks:
                body = self._bent_results(job_id, body, page, per_page)
            return Response(200, body)
        if route.endswith("(unmatched)"):
            raise ApiError(404, f"no route for {method} {request.path}")
        allowed = "GET, POST" if route.endswith("/v1/jobs") else "GET"
        raise ApiError(405, f"{method} is not allowed here", {"Allow": allowed})

    def _bent_results(self, job_id: str, body: bytes, page: int, per_page: int) -> bytes:
        view = self._jobs.job_view(job_id)
        last = max(1, math.ceil(view["total"] / per_page))
        return self.quirks.results(
            body, page=page, per_page=per_page, status=view["status"],
            first_page=self._jobs.results_page(job_id, 1, per_page),
            last_page=self._jobs.results_page(job_id, last, per_page),
        )

    def _admin(self, request: Request) -> Response:
        method, path = request.method, request.path.rstrip("/")
        parts = path.split("/")
        if (method, path) == ("GET", "/_sandbox/stats"):
            return json_response(200, self.stats())
        if (method, path) == ("POST", "/_sandbox/reset-stats"):
            self._stats.reset()
            return json_response(200, self.stats())
        if path == "/_sandbox/faults" and method in ("GET", "POST"):
            if method == "POST":
                self.apply_fault_changes(_json_object(request.body))
            return json_response(200, {**self._faults.describe(),
                                       "quirks": sorted(self.quirks.names)})
        if (method, path) == ("POST", "/_sandbox/seed"):
            arguments = self._jobs.check_seed_request(_json_object(request.body))
            return json_response(201, {"job_ids": self._jobs.seed_jobs(**arguments)})
        if (method, path) == ("POST", "/_sandbox/clock"):
            seconds = _json_object(request.body).get("advance", 0)
            if not isinstance(seconds, int | float) or seconds < 0:
                raise ApiError(400, "'advance' must be a number of seconds, 0 or more")
            self._clock.advance(float(seconds))
            return json_response(200, {"now": self._clock.now()})
        if len(parts) >= 4 and parts[:3] == ["", "_sandbox", "jobs"] and parts[3]:
            job_id, tail = parts[3], parts[4:]
            if method == "DELETE" and not tail:
                if not self._jobs.delete_job(job_id):
                    raise ApiError(404, f"job {job_id!r} not found")
                return json_response(200, {"deleted": job_id})
            if method == "POST" and tail == ["fail"]:
                message = _json_object(request.body or b"{}").get("error")
                if message is not None and not isinstance(message, str):
                    raise ApiError(400, "'error' must be a string")
                return json_response(200, self._jobs.fail_job(job_id, message))
            if method == "GET" and tail == ["items"]:
                return json_response(200, {"items": self._jobs.job_items(job_id)})
        raise ApiError(404, f"no sandbox route for {method} {request.path}")

    def apply_fault_changes(self, changes: dict[str, Any]) -> None:
        """Apply a `/_sandbox/faults` body: settings, `rules` to append, `clear_rules`."""
        changes = dict(changes)
        rules = changes.pop("rules", None)
        if "quirks" in changes:
            self.quirks.replace(changes.pop("quirks"))
        if changes.pop("clear_rules", False):
            self._faults.clear_rules()
        if changes:
            self._faults.configure(**changes)
        if rules is not None:
            if not isinstance(rules, list):
                raise ApiError(400, "'rules' must be a list")
            self._faults.add_rules(rules)

    def stats(self) -> dict[str, Any]:
        """Counters plus the credit balance."""
        return {**self._stats.snapshot(), "credits_balance": self._jobs.credits_balance()}


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = msgspec.json.decode(body or b"{}")
    except msgspec.DecodeError:
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return payload

