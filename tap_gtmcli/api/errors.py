"""How GTMCLI answers are classified: retriable or fatal, with a message fit for a log.

Messages name the method, the path and the status, and the API's `error` code, never the
body itself (it can hold personal data such as emails) and never the key.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any
from urllib.parse import urlparse
from weakref import WeakKeyDictionary

import msgspec
import requests
from singer_sdk.exceptions import FatalAPIError, RetriableAPIError

#: What a user should check for the statuses that retrying cannot fix.
_HINTS: dict[int, str] = {
    # The variables are the plugins' own: Meltano (and `--config ENV`) read them.
    HTTPStatus.UNAUTHORIZED: "the API key was refused: check the `api_key` setting "
    "(in Meltano: TAP_GTMCLI_API_KEY, MAPPER_GTMCLI_API_KEY or TARGET_GTMCLI_API_KEY)",
    HTTPStatus.PAYMENT_REQUIRED: "not enough GTMCLI credits: top up the account, then rerun",
    HTTPStatus.BAD_REQUEST: "GTMCLI rejected the request as malformed",
    HTTPStatus.FORBIDDEN: "the API key is not allowed to do this",
    HTTPStatus.NOT_FOUND: "not found",
}


class GTMCLIRetriableError(RetriableAPIError):
    """A transient failure (429, 5xx, a body that is not the JSON we expect)."""

    def __init__(
        self,
        message: str,
        response: requests.Response | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, response)
        self.retry_after = retry_after
        self.status = response.status_code if response is not None else None


class GTMCLIFatalError(FatalAPIError):
    """A failure that retrying cannot fix (400, 401, 402, 403, other 4xx)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GTMCLIAuthError(GTMCLIFatalError):
    """401: the key is missing or wrong."""


class GTMCLICreditsError(GTMCLIFatalError):
    """402: the account has not enough credits."""


class GTMCLIBadRequestError(GTMCLIFatalError):
    """400: the request was malformed."""


class GTMCLINotFoundError(GTMCLIFatalError):
    """404: the job does not exist (any more)."""


class GTMCLIAmbiguousCreateError(Exception):
    """A create call failed in a way that leaves open whether GTMCLI made the job.

    `api_answered` is True when the API itself answered (a 5xx with its JSON error
    body): it has finished with the call, so a job it made is listed already. Otherwise
    (no answer, a lost or cut answer, a gateway's 502/504 or page) the server may still
    be creating the job.
    """

    def __init__(self, message: str, started_at: float, *, api_answered: bool = False) -> None:
        super().__init__(message)
        self.started_at = started_at
        self.api_answered = api_answered


class GTMCLIRetriesExhaustedError(Exception):
    """Every allowed attempt failed with a transient error."""


class GTMCLICancelledError(Exception):
    """A request whose answer is no longer wanted: the run is stopping. Raised instead
    of sending another try or sleeping out a backoff; it says why nothing more came."""


class SubmissionFailedError(Exception):
    """A batch could not be submitted; the run must stop without releasing its STATE."""


class EnrichmentFailedError(Exception):
    """A job failed, timed out or answered results that do not fit its items."""


class SubmissionIndexError(SubmissionFailedError):
    """The submission index cannot be opened, read or written; it names the index."""


_FATAL_CLASSES: dict[int, type[GTMCLIFatalError]] = {
    HTTPStatus.UNAUTHORIZED: GTMCLIAuthError,
    HTTPStatus.PAYMENT_REQUIRED: GTMCLICreditsError,
    HTTPStatus.BAD_REQUEST: GTMCLIBadRequestError,
    HTTPStatus.NOT_FOUND: GTMCLINotFoundError,
}


def describe_request(response: requests.Response) -> str:
    """`GET /v1/jobs/job_1/results` for a response, without host or query string."""
    method = response.request.method if response.request is not None else "GET"
    return f"{method} {urlparse(response.url).path}"


def error_code(response: requests.Response) -> str:
    """The API's `error` code, or a word saying why there is none."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return "non-JSON body"
    code = body.get("error") if isinstance(body, dict) else None
    if isinstance(code, str):
        return code[:80]
    return "no error code"


def raise_for_response(response: requests.Response, retry_after: float | None = None) -> None:
    """Raise the error class that fits a non-2xx answer; return quietly on 2xx."""
    status = response.status_code
    if status < HTTPStatus.BAD_REQUEST:
        return
    where = describe_request(response)
    message = f"{where} answered {status} ({error_code(response)})"
    if status == HTTPStatus.TOO_MANY_REQUESTS or status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        raise GTMCLIRetriableError(message, response, retry_after)
    hint = _HINTS.get(status)
    error_class = _FATAL_CLASSES.get(status, GTMCLIFatalError)
    raise error_class(f"{message}: {hint}" if hint else message, status)


_decoded_bodies: WeakKeyDictionary[requests.Response, dict[str, Any]] = WeakKeyDictionary()
_JSON_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _malformed(response: requests.Response, error: ValueError) -> GTMCLIRetriableError:
    where = describe_request(response)
    if isinstance(error, msgspec.ValidationError):
        return GTMCLIRetriableError(f"{where} answered with JSON that is not an object", response)
    msg = f"{where} answered {response.status_code} with a body that is not valid JSON"
    return GTMCLIRetriableError(msg, response)


def check_json_object(response: requests.Response) -> None:
    """Raise what `decode_json` would for a truncated or non-JSON body, without
    building the body's values (a results page is checked again where it is read)."""
    if response in _decoded_bodies:
        return
    try:
        _JSON_OBJECT.decode(response.content)
    except ValueError as error:  # msgspec's DecodeError and ValidationError are ValueErrors
        raise _malformed(response, error) from error


def decode_json(response: requests.Response) -> dict[str, Any]:
    """The JSON object of a 2xx answer; a truncated or non-JSON body is retriable.

    Decoded once per response: validation, paging and parsing all read the same dict.
    """
    if response in _decoded_bodies:
        return _decoded_bodies[response]
    try:
        body = msgspec.json.decode(response.content, type=dict)
    except ValueError as error:
        raise _malformed(response, error) from error
    _decoded_bodies[response] = body
    return body


def describe_transport_error(error: BaseException) -> str:
    """What a transport failure means, in words (no URL, no urllib3 internals)."""
    request = getattr(error, "request", None)
    url = getattr(request, "url", None) or ""
    where = urlparse(url)
    host = f"{where.hostname}:{where.port or (443 if where.scheme == 'https' else 80)}" \
        if where.hostname else "the API host"
    if isinstance(error, requests.exceptions.SSLError):
        return (f"the TLS handshake with {host} failed (does the server speak https? check "
                "the scheme of `api_url`)")
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return f"could not connect to {host} within request_timeout"
    if isinstance(error, requests.exceptions.ReadTimeout):
        return "no whole answer within request_timeout"
    if isinstance(error, requests.exceptions.TooManyRedirects):
        return "redirected too many times (a redirect loop)"
    if isinstance(error, requests.exceptions.ChunkedEncodingError | ConnectionResetError):
        return "the connection broke before the answer was complete"
    if isinstance(error, requests.exceptions.ConnectionError):
        text = str(error)
        if "Connection refused" in text or "NewConnectionError" in text:
            return f"{host} refused the connection (is the server running, the port right?)"
        if "NameResolutionError" in text or "Name or service not known" in text:
            return f"the host name of {host} could not be resolved"
        return f"the connection to {host} failed"
    if isinstance(error, GTMCLIRetriableError | GTMCLIFatalError):
        return str(error)
    return type(error).__name__


def redirected_refusal(response: requests.Response, api_url: str) -> GTMCLIFatalError | None:
    """A 401/403 from a host other than `api_url`'s (after a redirect): not the key's fault,
    as the key is never sent to another host."""
    if response.status_code not in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
        return None
    answered, asked = urlparse(response.url), urlparse(api_url)
    if (answered.hostname, answered.port) == (asked.hostname, asked.port):
        return None
    port = f":{answered.port}" if answered.port else ""
    return GTMCLIFatalError(
        f"{describe_request(response)} answered {response.status_code} from "
        f"{answered.hostname}{port}, a host GTMCLI redirected to (`api_url` is "
        f"{asked.hostname}{':' + str(asked.port) if asked.port else ''}); the key is not "
        "sent to another host: point `api_url` at the host that serves the API",
        response.status_code,
    )
