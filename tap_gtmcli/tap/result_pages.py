"""One page of a job's results as the tap hands it on, and the rule that numbers its
rows: row k of a job answers the job's item k."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tap_gtmcli.tap.job_rows import JobRowsMismatchError


@dataclass(frozen=True)
class ResultPage:
    """One page of results, rows already numbered."""

    number: int
    rows: list[dict[str, Any]]
    #: How many pages the job has, from its row count (never the server's `total_pages`).
    total_pages: int | None
    #: The rows as Singer RECORD lines, when the stream writes pages directly (then
    #: `rows` may be left empty).
    record_lines: bytes | None = None
    row_count: int = -1
    #: The size of the answer, for the cap on pages held before they are written.
    byte_size: int = 0
    #: Rows a page holds, as the server answered it (at most what was asked).
    per_page: int = 0
    #: A digest of the rows as served, to tell a page served twice.
    digest: bytes = field(default=b"")

    def __post_init__(self) -> None:
        if self.row_count < 0:
            object.__setattr__(self, "row_count", len(self.rows))


@dataclass(frozen=True)
class ParsedPage:
    """A results answer whose shape was checked: rows are objects, numbered."""

    rows: list[dict[str, Any]]
    page: object
    per_page: object
    digest: bytes


def parse_results_page(
    body: dict[str, Any], *, job_id: str, requested_page: int, per_page: int, where: str
) -> ParsedPage:
    """The rows of a results answer, each given its `row_number` in the job; raises
    `JobRowsMismatchError` naming the endpoint when `results` is not a list of objects."""
    rows = body.get("results")
    if not isinstance(rows, list):
        shape = "no `results`" if "results" not in body else (
            f"`results` as {type(rows).__name__}, not a list")
        raise JobRowsMismatchError(job_id, f"{where} answered {shape}")
    for position, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise JobRowsMismatchError(job_id, (
                f"{where} answered row {position} of the page as "
                f"{type(row).__name__ if row is not None else 'null'}, not an object"))
    answered_per_page = body.get("per_page")
    size = answered_per_page if isinstance(answered_per_page, int) and not isinstance(
        answered_per_page, bool) and answered_per_page > 0 else per_page
    digest = hashlib.blake2b(digest_size=16)
    first_row = (requested_page - 1) * size + 1
    for offset, row in enumerate(rows):
        digest.update(msgspec.json.encode(row))
        row["row_number"] = first_row + offset
    return ParsedPage(rows, body.get("page"), answered_per_page, digest.digest())
