"""Paging of the job list: pages 1..`total_pages`, until a page brings no job not seen.

The list is documented without pagination and tolerated with it. A server can repeat
itself (the same page whatever `page` says, a `total_pages` that grows with each page):
a page that lists no job the run has not seen yet ends the list, so paging is bounded
by the jobs there are.
"""

from __future__ import annotations

import logging

import requests
from singer_sdk.pagination import PageNumberPaginator
from typing_extensions import override

from tap_gtmcli.api.errors import decode_json
from tap_gtmcli.api.paging import has_next_page
from tap_gtmcli.tap.job_bookmarks import job_id_of


class JobListPaginator(PageNumberPaginator):
    """Pages 1..total_pages; a single page when the answer carries no `total_pages`."""

    def __init__(self, logger: logging.Logger, start_value: int = 1) -> None:
        super().__init__(start_value)
        self._logger = logger
        self._seen: set[str] = set()

    @override
    def has_more(self, response: requests.Response) -> bool:
        body = decode_json(response)
        jobs = body.get("jobs")
        ids = {job_id_of(job) for job in jobs if isinstance(job, dict)} if isinstance(
            jobs, list) else set()
        ids.discard(None)
        new = {job_id for job_id in ids if job_id is not None} - self._seen
        self._seen.update(new)
        if not has_next_page(body, self.current_value):
            return False
        if not new:
            self._logger.warning(
                "GET /v1/jobs page %d lists no job not already seen; the list ends there",
                self.current_value)
            return False
        return True
