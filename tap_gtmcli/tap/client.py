"""The one place that holds GTMCLI's API policy for the tap's streams: base URL, auth,
timeouts, error classes, retries, pacing and what to do with fields we do not know yet
(and, in BATCH mode, that every stream of a tap shares one spool of files)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from functools import cached_property, partial
from importlib import resources
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import urlparse

import backoff
import msgspec
import requests
import urllib3
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

from tap_gtmcli.api.client import DEFAULT_API_URL, USER_AGENT, refused_before_any_answer
from tap_gtmcli.api.errors import (
    GTMCLIFatalError,
    GTMCLIRetriesExhaustedError,
    check_json_object,
    decode_json,
    describe_transport_error,
    raise_for_response,
    redirected_refusal,
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
from tap_gtmcli.api.stop_signals import StopSignals
from tap_gtmcli.tap import schemas
from tap_gtmcli.tap.batch_files import BatchSpool, spool_for
from tap_gtmcli.tap.pacer import Pacer
from tap_gtmcli.tap.schema_fit import EXTRA_FIELDS, SchemaFit

SCHEMAS = SchemaDirectory(resources.files(schemas))
WHOLE_BODY_CHUNK = 4 * 1024 * 1024
Answer = TypeVar("Answer")


class SharedByStreams(Protocol):
    """What the tap holds for all its streams: the limit is per key, so every stream and
    worker shares one pacer; in BATCH mode a flush announces every stream's files."""

    pacer: Pacer
    batch_spool: BatchSpool | None


class _WholeBodyAdapter(HTTPAdapter):
    """Reads each answer whole, within the request's timeout.

    requests' `timeout` bounds each socket read, not the answer: a server that sends a
    byte a second never times out. Here the timeout is a deadline for the whole answer,
    headers and body; past it the answer is cut and the request fails as a timeout
    (retried like any other). Bodies are read in large pieces rather than requests'
    10 KB chunks: a results page is a quarter of a megabyte, and the chunked read was a
    seventh of the tap's CPU time.
    """

    @override
    # requests types HTTPAdapter.send with a looser signature than its subclasses may
    # declare; the arguments are passed through unchanged.
    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, stream: bool = False, **kwargs: Any
    ) -> requests.Response:
        started = time.monotonic()
        response = super().send(request, stream=True, **kwargs)
        if stream:
            return response
        timeout = kwargs.get("timeout")
        seconds = timeout[-1] if isinstance(timeout, tuple) else timeout
        deadline = started + float(seconds) if seconds else None
        pieces = []
        try:
            while piece := response.raw.read1(WHOLE_BODY_CHUNK, decode_content=True):
                pieces.append(piece)
                if deadline is not None and time.monotonic() > deadline:
                    raise requests.exceptions.ReadTimeout(
                        f"{request.method} {urlparse(request.url or '').path} did not finish "
                        f"answering within request_timeout ({seconds} s)", request=request)
        except requests.exceptions.ReadTimeout:
            response.close()
            raise
        except (urllib3.exceptions.HTTPError, OSError) as error:
            response.close()
            raise requests.exceptions.ChunkedEncodingError(error, request=request) from error
        response._content = b"".join(pieces)
        response._content_consumed = True  # type: ignore[attr-defined]  # requests' own flag
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

    @property
    def stop_signals(self) -> StopSignals:
        """The tap's record of a SIGINT/SIGTERM (see api/stop_signals.py)."""
        signals: StopSignals = self._tap.stop_signals  # type: ignore[attr-defined]
        return signals

    def interruptible(self) -> AbstractContextManager[None]:
        """A wait that a signal may cut short: nothing is being written."""
        return self.stop_signals.interruptible()

    def check_not_stopped(self) -> None:
        """Stop here, between two writes, if a signal came."""
        self.stop_signals.check()

    @override
    def _write_schema_message(self) -> None:
        # The SDK writes a stream's SCHEMA each time the stream syncs: for `job_results`
        # once per job. Loaders of the pipelinewise family flush on every SCHEMA (200
        # jobs of 50 rows took 3x target-jsonl's time). Once per run, unless it changes.
        for message in self._generate_schema_messages():
            sent = msgspec.json.encode(message.to_dict(), order="sorted")
            if sent not in self._schemas_sent:
                self._schemas_sent.add(sent)
                self._tap.write_message(message)

    @cached_property
    def _schemas_sent(self) -> set[bytes]:
        return set()

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
        retry: bool = False,
        waited_out: bool = False,
    ) -> requests.Response:
        # The SDK's, with the pacer around the send: it is told of every answer before
        # validate_response raises on it, and of no answer at all.
        ticket = self.pacer.acquire(stop, retry=retry, waited_out=waited_out)
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
        all (see RetryBudget). A set `stop` ends the loop with `GTMCLICancelledError`.
        Giving up names the method, the path and what went wrong."""

        def described(args: tuple[Any, ...]) -> str:
            request = args[0] if args else None
            if isinstance(request, requests.PreparedRequest):
                return f"{request.method} {urlparse(request.url or '').path}"
            return f"GET {self.path}"

        def give_up(details: Details, what: str) -> None:
            error = details["exception"]
            raise GTMCLIRetriesExhaustedError(
                f"{what} failed after {details['tries']} attempt(s): "
                f"{describe_transport_error(error)}") from error

        def tried(*args: Any, **kwargs: Any) -> Answer:
            budget = RetryBudget(self.retry_policy)  # one per request, not per decorator
            what = described(args)

            def attempt() -> Answer:
                raise_if_stopped(stop, what)
                try:
                    # A retry goes first at the pacer, and is not held again for the
                    # 429 it waited out.
                    return func(*args, **kwargs, retry=budget.retried,
                                waited_out=budget.waited_out)
                except requests.exceptions.TooManyRedirects as error:
                    raise GTMCLIFatalError(
                        f"{what} was {describe_transport_error(error)}") from error

            def wait_before_retry(details: Details) -> None:
                error = details["exception"]
                try:
                    wait = budget.next_wait(error, what)
                except type(error) as spent:
                    if spent is not error:
                        raise
                    raise GTMCLIRetriesExhaustedError(
                        f"{what} failed after {details['tries']} attempt(s): "
                        f"{describe_transport_error(error)}") from error
                self.backoff_handler({**details, "wait": wait})
                with self.interruptible():
                    sleep_unless_stopped(wait, stop, what)

            retried: tuple[type[Exception], ...] = (*TRANSIENT_EXCEPTIONS, RetriableAPIError)
            return backoff.on_exception(
                **SLEEP_IN_ON_BACKOFF,
                exception=retried,
                max_tries=None,  # the budget decides
                # A TLS failure, or a refusal before the server ever answered, is a wrong
                # `api_url` or a server not running: fail at once, naming the host.
                giveup=lambda error: refused_before_any_answer(error, self._answered),
                on_giveup=lambda details: give_up(details, what),
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
            describe_transport_error(error) if isinstance(error, BaseException) else "?",
            level=logging.WARNING,
        )

    @override
    def validate_response(self, response: requests.Response) -> None:
        self._answered = True
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        refusal = redirected_refusal(response, self.url_base)
        if refusal is not None:
            raise refusal
        raise_for_response(response, retry_after)
        check_json_object(response)  # a truncated body is retried, not parsed

    #: True once the server answered this stream (see refused_before_any_answer).
    _answered = False

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
    def parse_response(self, response: requests.Response) -> Iterable[dict[str, Any]]:
        rows = decode_json(response).get(self.records_key) or []
        return [row for row in rows if isinstance(row, dict)]

    @cached_property
    def _known_fields(self) -> frozenset[str]:
        return frozenset(self.schema["properties"])

    @cached_property
    def _schema_fit(self) -> SchemaFit:
        return SchemaFit(self.name, self.schema["properties"], self.logger)

    def fold_unknown_fields(self, record: Record) -> Record:
        """Move fields the schema does not know, and values of a type it does not allow,
        into `additional_fields`, saying so once (see schema_fit.py)."""
        unknown = record.keys() - self._known_fields
        if not unknown:
            record[EXTRA_FIELDS] = None  # a stable column, null until GTMCLI adds fields
            return self._schema_fit.fit(record)
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
        return self._schema_fit.fit(record)

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

