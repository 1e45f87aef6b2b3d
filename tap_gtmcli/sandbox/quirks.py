"""Answers a real API may give that the docs do not: the sandbox's untrustworthy modes.

Each quirk bends a healthy answer the way some server somewhere does, so the clients
can be tested against more than one well-behaved server. Set with `--quirk NAME`
(repeatable) or `POST /_sandbox/faults {"quirks": [...]}` (which replaces the set).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any

import msgspec

from tap_gtmcli.sandbox.errors import ApiError

#: Quirk name -> what it does.
QUIRKS: dict[str, str] = {
    # Results pages.
    "results-total-pages-one": "results say total_pages 1 whatever the job's size",
    "results-total-pages-zero": "results say total_pages 0",
    "results-total-pages-grow": "total_pages is always one more than the page asked; pages "
                                "past the end repeat the last page's rows",
    "results-ignore-page": "every results page serves page 1's rows (echoing the page asked)",
    "results-missing": "results answers carry no `results` key",
    "results-object": "`results` is an object, not a list",
    "results-null-row": "the first row of each results page is null",
    "results-string-row": "the first row of each results page is a string",
    "results-short": "the job's last row is never served",
    "results-page-off": "results answers say `page` is one more than the page asked",
    "results-per-page-over": "results answers say `per_page` is twice what was asked",
    "results-wrong-types": "every row's `status` is a number and `email` a list",
    "results-refuse-failed": "results of a failed job answer 409",
    "unknown-fields": "every job object and result row carries a field the docs do not "
                      "name (`risk_note`), as a newer API version would",
    # The job list and job objects.
    "list-no-jobs": "the job list answers {\"data\": [...]} instead of {\"jobs\": [...]}",
    "list-repeats": "the job list is paginated, every page is page 1, total_pages grows",
    "created-at-epoch": "created_at as epoch seconds (a number)",
    "created-at-epoch-string": "created_at as epoch seconds (a string)",
    "created-at-rfc2822": "created_at as an RFC 2822 date",
    "created-at-space-nanos": "created_at with a space for T, nanoseconds and an offset",
    "created-at-null": "created_at null",
    "created-at-empty": "created_at empty",
    "created-at-missing": "no created_at",
    "newest-in-future": "the newest job's created_at is a day ahead (clock skew)",
    "numeric-ids": "job ids made only of digits are sent as numbers",
    "status-expired": "pending and processing jobs show the status `expired`",
}


class QuirkSet:
    """The quirks in force; thread-safe."""

    def __init__(self, names: tuple[str, ...] | list[str] = ()) -> None:
        self._lock = threading.Lock()
        self._names = self._checked(names)

    @staticmethod
    def _checked(names: Any) -> frozenset[str]:
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise ApiError(400, "'quirks' must be a list of quirk names")
        unknown = sorted(set(names) - set(QUIRKS))
        if unknown:
            raise ApiError(400, f"unknown quirks: {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(QUIRKS))})")
        return frozenset(names)

    def replace(self, names: Any) -> None:
        """Put exactly these quirks in force."""
        checked = self._checked(names)
        with self._lock:
            self._names = checked

    @property
    def names(self) -> frozenset[str]:
        """The quirks in force."""
        return self._names

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def __bool__(self) -> bool:
        return bool(self._names)

    # --- the answers -------------------------------------------------------------

    def job_view(self, view: dict[str, Any]) -> dict[str, Any]:
        """A job object as the quirks in force show it."""
        names = self._names
        created = view.get("created_at")
        moment = datetime.fromisoformat(created.replace("Z", "+00:00")) if isinstance(
            created, str) and created else None
        if moment is not None:
            if "created-at-epoch" in names:
                view["created_at"] = int(moment.timestamp())
            elif "created-at-epoch-string" in names:
                view["created_at"] = str(int(moment.timestamp()))
            elif "created-at-rfc2822" in names:
                view["created_at"] = format_datetime(moment, usegmt=True)
            elif "created-at-space-nanos" in names:
                local = moment.astimezone(datetime.now().astimezone().tzinfo)
                view["created_at"] = local.strftime("%Y-%m-%d %H:%M:%S.%f") + "123" + (
                    local.strftime("%z")[:3] + ":" + local.strftime("%z")[3:])
        if "created-at-null" in names:
            view["created_at"] = None
        elif "created-at-empty" in names:
            view["created_at"] = ""
        elif "created-at-missing" in names:
            view.pop("created_at", None)
        if "numeric-ids" in names and str(view.get("id", "")).isdigit():
            view["id"] = int(view["id"])
        if "status-expired" in names and view.get("status") in ("pending", "processing"):
            view["status"] = "expired"
        if "unknown-fields" in names:
            view["risk_note"] = {"job": view.get("id")}
        return view

    def job_list(self, answer: dict[str, Any], page: int) -> dict[str, Any]:
        """The job list as the quirks in force show it."""
        jobs = answer.get("jobs", [])
        if "newest-in-future" in self._names and jobs and page == 1:
            created = jobs[0].get("created_at")
            if isinstance(created, str) and created:
                ahead = datetime.fromisoformat(created.replace("Z", "+00:00")) + timedelta(days=1)
                jobs[0]["created_at"] = ahead.isoformat().replace("+00:00", "Z")
        answer["jobs"] = [self.job_view(job) for job in jobs]
        if "list-no-jobs" in self._names:
            answer["data"] = answer.pop("jobs")
        return answer

    def results(self, body: bytes, *, page: int, per_page: int, status: str,
                first_page: bytes | None, last_page: bytes | None) -> bytes:
        """A results answer as the quirks in force bend it."""
        names = self._names
        if "results-refuse-failed" in names and status == "failed":
            raise ApiError(409, "results of a failed job are not available")
        answer = msgspec.json.decode(body)
        total = answer["total"]
        if "results-ignore-page" in names and first_page is not None:
            answer["results"] = msgspec.json.decode(first_page)["results"]
        if "results-total-pages-grow" in names:
            answer["total_pages"] = page + 1
            if not answer["results"] and last_page is not None:
                answer["results"] = msgspec.json.decode(last_page)["results"]
        if "results-short" in names and (page - 1) * per_page + len(answer["results"]) >= total:
            answer["results"] = answer["results"][:-1]
        if "results-page-off" in names:
            answer["page"] = page + 1
        if "results-per-page-over" in names:
            answer["per_page"] = per_page * 2
        if "results-total-pages-one" in names:
            answer["total_pages"] = 1
        if "results-total-pages-zero" in names:
            answer["total_pages"] = 0
        if "results-wrong-types" in names:
            for row in answer["results"]:
                row["status"] = 7
                row["email"] = [row.get("email"), "second"]
        if "unknown-fields" in names:
            for row in answer["results"]:
                row["risk_note"] = {"row_email": row.get("email")}
        if answer["results"] and "results-null-row" in names:
            answer["results"][0] = None
        if answer["results"] and "results-string-row" in names:
            answer["results"][0] = "row"
        if "results-missing" in names:
            del answer["results"]
        elif "results-object" in names:
            answer["results"] = {"rows": answer["results"]}
        return msgspec.json.encode(answer)
