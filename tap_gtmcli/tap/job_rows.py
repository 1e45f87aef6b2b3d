"""The check that a job's result rows add up to the job: its `total` is the truth.

A results answer carries `page`, `per_page`, `total_pages` and its rows; any of them can
be wrong on some server (a `total_pages` of 1 for a job of 2,500 rows, a server that
ignores `page` and serves page 1 again, a null row). Only the job's own count of rows is
trusted: it fixes how many pages there are (at the `per_page` the server answers) and
how many rows each holds. Anything else is a `JobRowsMismatchError`, and the job is not
settled: it stays open in state and the next run reads it again. Rows are never
renumbered: row k of the job answers item k, or the job is not read.

`PageCheck` checks one answer on its own (in the worker that fetched it); `JobRowsTally`
checks the pages of one job together, in order, as the reader takes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class JobRowsMismatchError(Exception):
    """A job's results do not add up to the job; the message names what came."""

    def __init__(self, job_id: str, problem: str) -> None:
        super().__init__(f"job {job_id}: {problem}; the job is not settled and is read "
                         "again on the next run")
        self.job_id = job_id
        self.problem = problem


def expected_rows(job: dict[str, object]) -> int | None:
    """How many result rows a job has: `total` once completed, `completed` (the items
    processed) once failed; None when the job does not say."""
    count = job.get("total") if job.get("status") == "completed" else job.get("completed")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count
    return None


@dataclass(frozen=True)
class PageCheck:
    """What a job's page answers must be, given the job's row count and our `per_page`."""

    job_id: str
    rows: int
    per_page_asked: int

    def check(self, requested: int, answered_page: object, answered_per_page: object,
              row_count: int) -> int:
        """The page's `per_page` (the server may cap what we asked); raises
        `JobRowsMismatchError` when the answer is not the page asked for."""
        per_page = self.per_page_asked
        if answered_per_page is not None:
            if (not isinstance(answered_per_page, int) or isinstance(answered_per_page, bool)
                    or not 1 <= answered_per_page <= self.per_page_asked):
                raise JobRowsMismatchError(self.job_id, (
                    f"page {requested} answered per_page {answered_per_page!r}, not a "
                    f"number from 1 to the {self.per_page_asked} asked for"))
            per_page = answered_per_page
        if answered_page is not None and answered_page != requested:
            raise JobRowsMismatchError(
                self.job_id, f"asked for page {requested}, answered page {answered_page!r}")
        wanted = self.rows_on(requested, per_page)
        if row_count != wanted:
            raise JobRowsMismatchError(self.job_id, (
                f"page {requested} of {self.page_count(per_page)} ({per_page} rows a page) "
                f"should hold {wanted} of the job's {self.rows} rows, it held {row_count}"))
        return per_page

    def page_count(self, per_page: int) -> int:
        """How many pages the job's rows fill."""
        return math.ceil(self.rows / per_page)

    def rows_on(self, page: int, per_page: int) -> int:
        """Rows page `page` holds."""
        return max(0, min(per_page, self.rows - (page - 1) * per_page))


@dataclass
class JobRowsTally:
    """The pages of one job, taken in order: contiguous, never repeated, all there."""

    job_id: str
    rows: int
    rows_read: int = 0
    pages_read: int = 0
    per_page: int | None = None
    _digests: set[bytes] = field(default_factory=set)

    def add(self, number: int, per_page: int, row_count: int, digest: bytes) -> None:
        """Take the job's next page; raises `JobRowsMismatchError` if it does not follow."""
        if number != self.pages_read + 1:
            raise JobRowsMismatchError(
                self.job_id, f"page {number} came after page {self.pages_read}")
        if self.per_page is not None and per_page != self.per_page:
            raise JobRowsMismatchError(self.job_id, (
                f"page {number} has {per_page} rows a page, page 1 had {self.per_page}: "
                "row positions would not be contiguous"))
        if row_count and digest in self._digests:
            raise JobRowsMismatchError(
                self.job_id, f"page {number} repeats the rows of an earlier page")
        self._digests.add(digest)
        self.per_page = per_page
        self.pages_read = number
        self.rows_read += row_count

    def finish(self) -> None:
        """Raises `JobRowsMismatchError` unless every row of the job was read."""
        if self.rows_read != self.rows:
            raise JobRowsMismatchError(self.job_id, (
                f"the job has {self.rows} rows, {self.rows_read} came in "
                f"{self.pages_read} pages"))


class JobsNotReadError(Exception):
    """The run extracted what it could, but some jobs' rows did not add up."""

    def __init__(self, problems: dict[str, str]) -> None:
        listed = "; ".join(f"{job_id}: {problem}" for job_id, problem in problems.items())
        super().__init__(
            f"{len(problems)} job(s) not settled because their rows did not add up "
            f"(they stay open in state and the next run reads them again): {listed}")
        self.problems = problems
