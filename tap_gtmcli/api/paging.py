"""GTMCLI's page numbering: pages 1..`total_pages`, one page when an answer has none.

The job list is documented without pagination and tolerated with it; results are always
paged. Every reader of either asks this module whether another page follows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any


def total_pages(body: Mapping[str, Any]) -> int | None:
    """The answer's `total_pages`, or None when it carries no usable one."""
    value = body.get("total_pages")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def has_next_page(body: Mapping[str, Any], page: int) -> bool:
    """True when the answer for `page` says a later page exists."""
    last = total_pages(body)
    return last is not None and page < last


def iterate_pages(
    fetch: Callable[[int], Mapping[str, Any]], items_key: str = "jobs"
) -> Iterator[Mapping[str, Any]]:
    """Answers for pages 1, 2, ... until one says it is the last, or serves the same
    items as the page before (a server that ignores `page` would never end)."""
    page = 1
    previous: object = None
    while True:
        body = fetch(page)
        items = body.get(items_key)
        if page > 1 and items == previous:
            return
        yield body
        if not has_next_page(body, page):
            return
        previous = items
        page += 1
