"""The API's error responses: a status, a machine code and a human message."""

from __future__ import annotations

from collections.abc import Mapping

ERROR_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    402: "insufficient_credits",
    404: "not_found",
    405: "method_not_allowed",
    429: "rate_limit_exceeded",
}


def error_code_for(status: int) -> str:
    """The documented error code for an HTTP status."""
    if status >= 500:
        return "internal_error"
    return ERROR_CODES.get(status, "error")


class ApiError(Exception):
    """A request the API answers with an error body instead of a result."""

    def __init__(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = error_code_for(status)
        self.message = message
        self.headers = dict(headers or {})
