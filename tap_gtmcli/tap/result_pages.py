"""One page of a job's results as the tap hands it on, and the rule that numbers its
rows: row k of a job answers the job's item k."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tap_gtmcli.api.paging import total_pages


@dataclass(frozen=True)
class ResultPage:
    """One page of results as the API served it, rows already numbered."""

    number: int
    rows: list[dict[str, Any]]
    total_pages: int | None
    #: The rows as Singer RECORD lines, when the stream writes pages directly (then
    #: `rows` may be left empty).
    record_lines: bytes | None = None
    row_count: int = -1
    #: The size of the answer, for the cap on pages held before they are written.
    byte_size: int = 0

    def __post_init__(self) -> None:
        if self.row_count < 0:
            object.__setattr__(self, "row_count", len(self.rows))


def _int_or(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def parse_results_page(body: dict[str, Any], requested_page: int, per_page: int) -> ResultPage:
    """The rows of a results answer, each given its `row_number` in the job."""
    rows = [row for row in body.get("results") or [] if isinstance(row, dict)]
    # Row k of the job answers item k: number rows from the page the API says it
    # served, which may differ from what we asked if it clamps per_page.
    page = _int_or(body.get("page"), requested_page)
    first_row = (page - 1) * _int_or(body.get("per_page"), per_page) + 1
    for offset, row in enumerate(rows):
        row["row_number"] = first_row + offset
    return ResultPage(page, rows, total_pages(body))
