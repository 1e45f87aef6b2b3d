"""Page-number paging that stops at `total_pages`, as both GTMCLI list shapes use."""

from __future__ import annotations

import requests
from singer_sdk.pagination import PageNumberPaginator
from typing_extensions import override

from tap_gtmcli.api.errors import decode_json
from tap_gtmcli.api.paging import has_next_page, total_pages


class TotalPagesPaginator(PageNumberPaginator):
    """Pages 1..total_pages; a single page when the answer carries no `total_pages`."""

    def __init__(self, start_value: int = 1) -> None:
        super().__init__(start_value)
        self.total_pages: int | None = None

    @override
    def has_more(self, response: requests.Response) -> bool:
        body = decode_json(response)
        self.total_pages = total_pages(body)
        return has_next_page(body, self.current_value)
