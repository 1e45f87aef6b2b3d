"""Helpers for the mapper and target tests: a scripted fake client, in-process runs."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.api.errors import GTMCLIAmbiguousCreateError, GTMCLICreditsError
from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tap_gtmcli.submit.mapper import GTMCLIMapper
from tests.key_scan import TEST_API_KEY

FIXTURES = Path(__file__).parent / "fixtures"
API_KEY = TEST_API_KEY


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


def singer_lines(messages: list[dict]) -> str:
    """Messages as the text of a .singer file."""
    return "".join(json.dumps(message) + "\n" for message in messages)


def read_messages(data: bytes) -> list[dict]:
    """The Singer messages of an output."""
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def run_mapper(
    config: dict[str, Any],
    messages: list[dict] | str,
    client: Any = None,
    plugin: type[GTMCLIMapper] = GTMCLIMapper,
) -> list[dict]:
    """Feed messages (or .singer text) through a plugin in process; return its output."""
    text = messages if isinstance(messages, str) else singer_lines(messages)
    output = io.BytesIO()
    mapper = plugin(config={"api_key": API_KEY, **config}, output=output, client=client)
    try:
        mapper.listen(io.StringIO(text))
    finally:
        mapper.output_writer.flush()
        collected = read_messages(output.getvalue())
        run_mapper.last_output = collected  # type: ignore[attr-defined]
    return collected


def schema(stream: str = "contacts") -> dict:
    return {
        "type": "SCHEMA",
        "stream": stream,
        "schema": {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "email": {"type": ["string", "null"]}},
        },
        "key_properties": ["id"],
    }


def record(stream: str = "contacts", **fields: Any) -> dict:
    return {"type": "RECORD", "stream": stream, "record": fields}


def state(n: int) -> dict:
    return {"type": "STATE", "value": {"bookmarks": {"contacts": {"id": n}}}}


def of_stream(messages: list[dict], stream: str, kind: str = "RECORD") -> list[dict]:
    return [m for m in messages if m.get("type") == kind and m.get("stream") == stream]


@pytest.fixture
def fake() -> FakeGTMCLI:
    return FakeGTMCLI()


@pytest.fixture
def sandbox() -> Iterator[Any]:
    """A fast, fault-free sandbox accepting `API_KEY`."""


    with SandboxServer(SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0)) as server:
        yield server


def sandbox_config(server: Any, **settings: Any) -> dict[str, Any]:
    """Plugin settings pointing at a sandbox, with quick retries."""
    return {"api_url": server.url, "api_key": API_KEY, "request_timeout": 2, **settings}


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def fixture_messages(name: str) -> list[dict]:
    return [json.loads(line) for line in fixture_text(name).splitlines()]
