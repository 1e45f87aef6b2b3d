"""The one place that holds GTMCLI's API policy for the tap's streams: base URL, auth,
timeouts, error classes, retries, pacing and what to do with fields we do not know yet
(and, in BATCH mode, that every stream of a tap shares one spool of files)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Iterable
from datetime import datetime, timezone
from functools import cached_property, partial
from importlib import resources
from typing import Any, Protocol, TypeVar, cast

import backoff
import requests
from backoff.types import Details
from requests.adapters import HTTPAdapter
from singer_sdk import RESTStream, SchemaDirectory, StreamSchema
from singer_sdk.authenticators import BearerTokenAuthenticator
from singer_sdk.exceptions import RetriableAPIError
from singer_sdk.helpers._batch import BaseBatchFileEncoding, BatchConfig
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.helpers.types import Context, Record
from singer_sdk.singerlib import RecordMessage
from typing_extensions import override

from tap_gtmcli.api.client import DEFAULT_API_URL, USER_AGENT
from tap_gtmcli.api.errors import (
    check_json_object,
    decode_json,
    raise_for_response,
)
from tap_gtmcli.api.retry import (
    SLEEP_IN_ON_BACKOFF,
    TRANSIENT_EXCEPTIONS,
    RetryBudget,
    RetryPolicy,
    parse_retry_after,
    raise_if_stopped,
    sleep_unless_stopped,
)
from tap_gtmcli.tap import schemas
from tap_gtmcli.tap.batch_files import BatchSpool, spool_for
from tap_gtmcli.tap.pacer import Pacer
from tap_gtmcli.tap.pagination import TotalPagesPaginator

SCHEMAS = SchemaDirectory(resources.files(schemas))
EXTRA_FIELDS = "additional_fields"
WHOLE_BODY_CHUNK = 4 * 1024 * 1024
Answer = TypeVar("Answer")


class SharedByStreams(Protocol):
    """What the tap holds for all its streams: the limit is per key, so every stream and
    worker shares one pacer; in BATCH mode a flush announces every stream's files."""

    pacer: Pacer
    batch_spool: BatchSpool | None


class _WholeBodyAdapter(HTTPAdapter):
    """Reads each answer in one go rather than in requests' 10 KB chunks: a results
    page is a quarter of a megabyte, and the chunked read was a seventh of the tap's
    CPU time."""

    @override
    # requests types HTTPAdapter.send with a looser signature than its subclasses may
    # declare; the arguments are passed through unchanged.
    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, stream: bool = False, **kwargs: Any
    ) -> requests.Response:
        response = super().send(request, stream=stream, **kwargs)
        if not stream:
            # What `Response.content` would do, with one large chunk.
            response._content = b"".join(response.iter_content(WHOLE_BODY_CHUNK)) or b""
        return response


class GTMCLIStream(RESTStream[int]):
    """Base for GTMCLI streams: every request goes through this policy."""

    schema = StreamSchema(SCHEMAS)
    records_key: str = ""

    @override
    @property
    def url_base(self) -> str:
        return str(self.config.get("api_url") or DEFAULT_API_URL).rstrip("/")

    @override
    @property
    def authenticator(self) -> BearerTokenAuthenticator:
        return BearerTokenAuthenticator(token=self.config["api_key"])

    @override
    @property
    def http_headers(self) -> dict[str, str]:
        return {"User-Agent": USER_AGENT}

    @override
    @property
    def emit_activate_version_messages(self) -> bool:
        # Never: every run is incremental (see TapGTMCLI.capabilities).
        return False

    @override
    @property
    def timeout(self) -> int:
        return int(self.config.get("request_timeout", 60))

    @cached_property
    def pacer(self) -> Pacer:
        """The tap's one pacer (see pacer.py), which every request of the run passes."""
        return cast(SharedByStreams, self._tap).pacer

    @override
    @property
    def requests_session(self) -> requests.Session:
        # Workers share one session: its pool must hold a connection for each of them,
        # or urllib3 opens and discards connections beyond its default of 10.
        session = super().requests_session
        if session.adapters.get("http://") is not self._pooled_adapter:
            session.mount("https://", self._pooled_adapter)
            session.mount("http://", self._pooled_adapter)
        return session

    @cached_property
    def _pooled_adapter(self) -> HTTPAdapter:
        return _WholeBodyAdapter(
            pool_connections=1, pool_maxsize=max(10, self.pacer.max_window)
        )

    @override
    def _request(
        self,
        prepared_request: requests.PreparedRequest,
        context: Context | None,
        stop: threading.Event | None = None,
        waited_out: bool = False,
    ) -> requests.Response:
        # The SDK's, with the pacer around the send: it is told of every answer before
        # validate_response raises on it, and of no answer at all.
        ticket = self.pacer.acquire(stop, waited_out=waited_out)
        response = None
        try:
            response = self.requests_session.send(
                self.authenticator(prepared_request),
                timeout=self.timeout,
                allow_redirects=self.allow_redirects,
            )
        finally:
            self.pacer.observe(ticket, response)
        self._write_request_duration_log(
            endpoint=self.path, response=response, context=context,
            extra_tags={"url": prepared_request.path_url}
            if self._LOG_REQUEST_METRIC_URLS else None,
        )
        self.validate_response(response)
        return response

    def send_with_retries(
        self,
        request: requests.PreparedRequest,
        context: Context | None,
        stop: threading.Event | None = None,
    ) -> requests.Response:
        """Send `request` under the retry policy; safe to call from several threads.

        Once `stop` is set, no further try is sent and no wait (a backoff, a hold by the
        pacer) is slept out: `GTMCLICancelledError` is raised instead.
        """
        return self.retrying(partial(self._request, stop=stop), stop)(request, context)

    @override
    def request_decorator(
        self, func: Callable[[requests.PreparedRequest, Context | None], requests.Response]
    ) -> Callable[[requests.PreparedRequest, Context | None], requests.Response]:
        # The SDK's decorator lets `backoff` sleep with time.sleep, which nothing can cut
        # short; the job list, read through the SDK's request_records, retries here too.
        return self.retrying(func)

    def retrying(
        self, func: Callable[..., Answer], stop: threading.Event | None = None
    ) -> Callable[..., Answer]:
        """`func` tried again on transient failures: after `Retry-After` exactly when the
        API gives one, else after exponential backoff with full jitter, `max_retries`
        times at most; 429s that name their wait for `max_rate_limit_wait` seconds in
        all (see RetryBudget). A set `stop` ends the loop with `GTMCLICancelledError`."""
        what = f"GET {self.path}"

        def tried(*args: Any, **kwargs: Any) -> Answer:
            budget = RetryBudget(self.retry_policy)  # one per request, not per decorator

            def attempt() -> Answer:
                raise_if_stopped(stop, what)
                if budget.waited_out:  # not held again for the 429 it waited out
                    return func(*args, **kwargs, waited_out=True)
                return func(*args, **kwargs)

            def wait_before_retry(details: Details) -> None:
                wait = budget.next_wait(details["exception"], what)
                self.backoff_handler({**details, "wait": wait})
                sleep_unless_stopped(wait, stop, what)

            retried: tuple[type[Exception], ...] = (*TRANSIENT_EXCEPTIONS, RetriableAPIError)
            return backoff.on_exception(
                **SLEEP_IN_ON_BACKOFF,
                exception=retried,
                max_tries=None,  # the budget decides
                on_backoff=wait_before_retry,
                logger=None,
            )(attempt)()

        return tried

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        """Retries from the `max_retries` and `max_rate_limit_wait` settings."""
        return RetryPolicy(
            max_retries=int(self.config.get("max_retries", 5)),
            max_rate_limit_wait=float(self.config.get("max_rate_limit_wait", 300)),
        )

    @override
    def backoff_handler(self, details: Any) -> None:
        error = details.get("exception")
        self.log(
            "Retry %d of %d for %s in %.2f s after %s",
            details.get("tries"),
            self.retry_policy.max_retries,
            self.path,
            details.get("wait") or 0.0,
            error if isinstance(error, Exception) and "answered" in str(error)
            else type(error).__name__,
            level=logging.WARNING,
        )

    @override
    def validate_response(self, response: requests.Response) -> None:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise_for_response(response, retry_after)
        check_json_object(response)  # a truncated body is retried, not parsed

    @cached_property
    def batch_spool(self) -> BatchSpool | None:
        """The tap's spool of BATCH files, or None when `batch_config` is not set."""
        batch_config = self.get_batch_config(self.config)
        if batch_config is None:
            return None
        tap = self._tap
        shared = cast(SharedByStreams, tap)
        if shared.batch_spool is None:

            def announce(stream: str, url: str) -> None:
                tap.streams[stream]._write_batch_message(batch_config.encoding, [url])

            shared.batch_spool = spool_for(
                batch_config, file_prefix=f"{tap.name}--", announce=announce,
                write_state=lambda: tap.state_writer.write_state(tap.state),
            )
        return shared.batch_spool

    @override
    def get_batches(
        self, batch_config: BatchConfig, context: Context | None = None
    ) -> Iterable[tuple[BaseBatchFileEncoding, list[str]]]:
        # The spool writes the BATCH and STATE messages itself: the SDK would write a
        # STATE after each batch of one stream, settling jobs whose rows are still in
        # another stream's open file.
        spool = self.batch_spool
        assert spool is not None  # the SDK calls this only when batch_config is set
        for record in self._sync_records(context, write_messages=False):
            spool.add_rows(self.name, [record])
        if self.parent_stream_type is None:
            spool.flush()  # the end of the run: every file announced, then a STATE
        yield from ()

    @override
    def get_new_paginator(self) -> TotalPagesPaginator:
        return TotalPagesPaginator()

    @override
    def parse_response(self, response: requests.Response) -> Iterable[dict[str, Any]]:
        rows = decode_json(response).get(self.records_key) or []
        return [row for row in rows if isinstance(row, dict)]

    @cached_property
    def _known_fields(self) -> frozenset[str]:
        return frozenset(self.schema["properties"])

    def fold_unknown_fields(self, record: Record) -> Record:
        """Move fields the schema does not know into `additional_fields`, saying so once."""
        unknown = record.keys() - self._known_fields
        if not unknown:
            record[EXTRA_FIELDS] = None  # a stable column, null until GTMCLI adds fields
            return record
        extras = {key: record.pop(key) for key in sorted(unknown)}
        new_names = sorted(unknown - self._reported_unknown)
        if new_names:
            self._reported_unknown.update(new_names)
            self.logger.warning(
                "GTMCLI returned fields this tap does not know yet on '%s': %s; "
                "they are kept in '%s'",
                self.name,
                ", ".join(new_names),
                EXTRA_FIELDS,
            )
        record[EXTRA_FIELDS] = extras
        return record

    @cached_property
    def _reported_unknown(self) -> set[str]:
        return set()

    @override
    def post_process(self, row: Record, context: Context | None = None) -> Record | None:
        return self.fold_unknown_fields(row)

    @cached_property
    def _record_path_is_trivial(self) -> bool:
        # True when the SDK's per-record work would change nothing: every property is
        # selected (nothing to pop) and the stream asks for no type conformance.
        return (
            self.TYPE_CONFORMANCE_LEVEL == TypeConformanceLevel.NONE
            and all(self.mask.values())
        )

    @override
    def _generate_record_messages(self, record: Record) -> Generator[RecordMessage, None, None]:
        # The SDK walks every record against the selection mask and the schema before
        # mapping it; for result rows that is a third of the tap's CPU time and a no-op
        # when everything is selected and rows are plain JSON. Mapping still applies.
        if not self._record_path_is_trivial:
            yield from super()._generate_record_messages(record)
            return
        for stream_map in self.stream_maps:
            mapped = stream_map.transform(record)
            if mapped is not None:
                yield RecordMessage(
                    stream=stream_map.stream_alias,
                    record=mapped,
                    version=self._stream_version,
                    time_extracted=datetime.now(timezone.utc),
                )

