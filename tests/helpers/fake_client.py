"""A scripted stand-in for `GTMCLIClient`, for the failures the sandbox cannot be told
to produce on one given create (a 402, an answer lost after the job was created).

Prefer the sandbox (tests/helpers/sandboxes.py): it is the real HTTP contract.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from tap_gtmcli.api.errors import GTMCLIAmbiguousCreateError, GTMCLICreditsError


class FakeGTMCLI:
    """An in-memory stand-in for `GTMCLIClient` with scripted create failures.

    `create_script` entries: "ok", "402", "ambiguous-created" (the job exists but the
    answer was lost), "ambiguous-lost" (nothing was created).
    """

    def __init__(self, create_script: list[str] | None = None) -> None:
        self.create_script = list(create_script or [])
        self.jobs: dict[str, dict[str, Any]] = {}
        self.items: dict[str, list[dict[str, str]]] = {}
        self.create_calls = 0
        #: Seconds each create takes, so that reading runs ahead of it.
        self.create_delay = 0.0
        self.job_status = "completed"
        self.result_override: Callable[[str, int, dict[str, str]], dict] | None = None
        self.closed = False

    def _make_job(self, job_type: str, items: list[dict[str, str]]) -> dict[str, Any]:
        job_id = f"job_{len(self.jobs) + 1}"
        job = {
            "id": job_id,
            "type": job_type,
            "status": "pending",
            "total": len(items),
            "completed": 0,
            "created_at": "2099-01-01T00:00:00Z",
        }
        self.jobs[job_id] = job
        self.items[job_id] = [dict(item) for item in items]
        return job

    def create_job(
        self,
        job_type: str,
        items: list[dict[str, str]],
        webhook_url: str | None = None,
        *,
        body_bytes: bytes | None = None,
    ) -> dict:
        self.create_calls += 1
        time.sleep(self.create_delay)
        if body_bytes is not None:
            assert json.loads(body_bytes) == {
                "type": job_type,
                "data": items,
                **({"webhook_url": webhook_url} if webhook_url else {}),
            }
        step = self.create_script.pop(0) if self.create_script else "ok"
        if step == "402":
            raise GTMCLICreditsError(
                "POST /v1/jobs answered 402 (insufficient_credits): not enough GTMCLI credits", 402
            )
        if step == "ambiguous-created":
            self._make_job(job_type, items)
            raise GTMCLIAmbiguousCreateError(
                "POST /v1/jobs may or may not have created a job: ReadTimeout", 0.0
            )
        if step == "ambiguous-lost":
            raise GTMCLIAmbiguousCreateError(
                "POST /v1/jobs may or may not have created a job: POST /v1/jobs answered "
                "503 (service_unavailable)",
                0.0,
                api_answered=True,
            )
        return dict(self._make_job(job_type, items))

    def list_jobs(self) -> Iterator[dict]:
        yield from reversed([dict(job) for job in self.jobs.values()])

    def list_jobs_page(self, page: int = 1) -> dict:
        return {"jobs": list(self.list_jobs()) if page == 1 else []}

    def get_job(self, job_id: str) -> dict:
        job = dict(self.jobs[job_id])
        job["status"] = self.job_status
        if self.job_status == "failed":
            job["error"] = "provider outage"
        return job

    def get_results_page(self, job_id: str, page: int, per_page: int) -> dict:
        items = self.items[job_id]
        start = (page - 1) * per_page
        rows = []
        for index, item in enumerate(items[start : start + per_page], start=start):
            row = self.result_row(job_id, index, item)
            rows.append(row)
        return {"results": rows, "page": page, "per_page": per_page, "total": len(items)}

    def result_row(self, job_id: str, index: int, item: dict[str, str]) -> dict:
        if self.result_override is not None:
            return self.result_override(job_id, index, item)
        if "email" in item:
            return {
                "email": item["email"],
                "status": "valid",
                "provider": "google",
                "sub_status": None,
            }
        return {
            "email": f"{item['first_name']}.{item['last_name']}@{item['domain']}",
            "status": "valid",
            "provider": "microsoft",
            "convention": "first.last",
            "confidence": 0.9,
        }

    def close(self) -> None:
        self.closed = True
