"""Checking what clients send: the create-job body and paging parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from tap_gtmcli.sandbox.errors import ApiError
from tap_gtmcli.sandbox.outcomes import JOB_TYPES, REQUIRED_FIELDS

MAX_JOB_ITEMS = 100_000
DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 1000


@dataclass(frozen=True)
class CreateJobRequest:
    """A create-job body that passed every check."""

    type: str
    items: list[dict[str, Any]]
    webhook_url: str | None


def parse_create_job(body: bytes) -> CreateJobRequest:
    """Decode and check a `POST /v1/jobs` body, raising a 400 for the first problem."""
    try:
        payload = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object")
    job_type = payload.get("type")
    if job_type is None:
        raise ApiError(400, "'type' is required: 'validate' or 'find'")
    if job_type not in JOB_TYPES:
        raise ApiError(400, f"'type' must be 'validate' or 'find', not {job_type!r}")
    items = payload.get("data")
    if items is None:
        raise ApiError(400, "'data' is required: a list of items")
    if not isinstance(items, list):
        raise ApiError(400, "'data' must be a list of items")
    if not items:
        raise ApiError(400, "'data' must hold at least one item")
    if len(items) > MAX_JOB_ITEMS:
        raise ApiError(
            400, f"'data' holds {len(items)} items; a job takes at most {MAX_JOB_ITEMS}"
        )
    check_items(job_type, items)
    webhook_url = payload.get("webhook_url")
    if webhook_url is not None and (
        not isinstance(webhook_url, str) or not webhook_url.startswith(("http://", "https://"))
    ):
        raise ApiError(400, "'webhook_url' must be an http:// or https:// URL")
    return CreateJobRequest(type=job_type, items=items, webhook_url=webhook_url)


def check_items(job_type: str, items: list[Any]) -> None:
    """Every item must be an object whose required fields are strings."""
    required = REQUIRED_FIELDS[job_type]
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(400, f"data[{index}] must be an object")
        for field in required:
            value = item.get(field)
            if value is None:
                raise ApiError(400, f"data[{index}] is missing the required field '{field}'")
            if not isinstance(value, str):
                raise ApiError(400, f"data[{index}].{field} must be a string")


def parse_paging(query: dict[str, list[str]], default_per_page: int) -> tuple[int, int]:
    """1-based `page` and `per_page` from a query string; per_page above 1000 is clamped."""
    page = _positive_int(query, "page", 1)
    per_page = _positive_int(query, "per_page", default_per_page)
    return page, min(per_page, MAX_PER_PAGE)


def _positive_int(query: dict[str, list[str]], name: str, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        number = int(values[-1])
    except ValueError:
        raise ApiError(400, f"'{name}' must be an integer") from None
    if number < 1:
        raise ApiError(400, f"'{name}' must be 1 or more")
    return number
