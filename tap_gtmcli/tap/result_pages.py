"""The result pages of one job, fetched by a bounded pool of workers and handed over
strictly in page order.

A 100,000-row job is 100 pages; fetched one after another, a run spends its time
waiting on the network. Here up to `window` pages are requested or waiting to be
emitted at any moment: the next pages download while the current one is written, and
memory stays bounded by the window, not by the size of the job.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tap_gtmcli.api.paging import total_pages

Request = TypeVar("Request")


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


class ResultPages(Generic[Request]):
    """Pages 1..last of one job, up to `window` of them fetched ahead of the reader.

    `prepare` builds a page's request in the reading thread; `send` runs in a worker
    and returns the parsed page (retries included). The last page is the one the
    latest answer's `total_pages` names; `expected_pages` (from the job's `total`)
    only lets the first requests go out together.
    """

    def __init__(
        self,
        *,
        prepare: Callable[[int], Request],
        send: Callable[[Request], ResultPage],
        window: int,
        expected_pages: int | None = None,
    ) -> None:
        self._prepare = prepare
        self._send = send
        self.window = max(1, window)
        self._expected_pages = max(1, expected_pages or 1)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.requested = 0

    def __iter__(self) -> Iterator[ResultPage]:
        pool = ThreadPoolExecutor(max_workers=self.window, thread_name_prefix="gtmcli-page")
        pending: deque[tuple[int, Future[ResultPage]]] = deque()
        next_page, last_page = 1, self._expected_pages
        completed = False
        try:
            while True:
                while len(pending) < self.window and next_page <= last_page:
                    request = self._prepare(next_page)
                    pending.append((next_page, pool.submit(self._send, request)))
                    next_page += 1
                    self.requested += 1
                    self.in_flight = len(pending)
                    self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                if not pending:
                    break
                number, future = pending.popleft()
                page = future.result()
                self.in_flight = len(pending)
                # No `total_pages` means a single page, as the paginator reads it.
                last_page = page.total_pages if page.total_pages is not None else number
                if number > last_page or not page.row_count:
                    break  # past the end, or an empty page: nothing further to read
                yield page
            completed = True
        finally:
            for _, future in pending:
                future.cancel()
            # On failure, a worker still inside a retry is not waited for.
            pool.shutdown(wait=completed, cancel_futures=True)
