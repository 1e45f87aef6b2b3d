"""Page-number paging that stops at `total_pages`, as both GTMCLI list shapes use."""

from __future__ import annotations

import requests
from singer_sdk.pagination import PageNumberPaginator
from typing_extensions import override

from tap_gtmcli.errors import decode_json


class TotalPagesPaginator(PageNumberPaginator):
    """Pages 1..total_pages; a single page when the answer carries no `total_pages`."""

    def __init__(self, start_value: int = 1) -> None:
        super().__init__(start_value)
        self.total_pages: int | None = None

    @override
    def has_more(self, response: requests.Response) -> bool:
        total_pages = decode_json(response).get("total_pages")
        self.total_pages = total_pages if isinstance(total_pages, int) else None
        return self.total_pages is not None and self.current_value < self.total_pages
