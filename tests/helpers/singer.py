"""Singer messages as a test writes them and reads them back, and what a run emitted."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The .singer inputs the mapper and target tests feed.
FIXTURES = Path(__file__).resolve().parent.parent / "mapper" / "fixtures"


def singer_text(messages: Iterable[Any]) -> str:
    """Messages (dicts, or lines already written) as the text of a .singer file."""
    return "".join((m if isinstance(m, str) else json.dumps(m)) + "\n" for m in messages)


def read_messages(data: bytes | str) -> list[dict]:
    """The Singer messages of an output."""
    text = data.decode() if isinstance(data, bytes) else data
    return [json.loads(line) for line in text.splitlines() if line.strip()]


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


def contacts(count: int, first: int = 0) -> list[dict]:
    """SCHEMA, `count` validate records (ids from `first`, emails in mixed case with a
    trailing space), a STATE after each 10."""
    messages: list[dict] = [schema()]
    for number in range(first, first + count):
        messages.append(record(id=number, email=f"Person{number}@Example.com "))
        if number % 10 == 9:
            messages.append(state(number))
    return messages


def of_stream(messages: list[dict], stream: str, kind: str = "RECORD") -> list[dict]:
    return [m for m in messages if m.get("type") == kind and m.get("stream") == stream]


def result_rows(output: str) -> list[dict]:
    """The `job_results` rows a tap wrote, from its stdout."""
    return [m["record"] for m in of_stream(read_messages(output), "job_results")]


def file_rows(url: str) -> list[dict[str, Any]]:
    """The rows of one BATCH file (a file:// URL), gzipped or not."""
    path = Path(url.removeprefix("file://"))
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in data.splitlines()]


def batch_rows(messages: list[dict[str, Any]], stream: str) -> list[dict[str, Any]]:
    """The rows of `stream` in every file the BATCH messages name, in order."""
    return [row for m in messages if m["type"] == "BATCH" and m["stream"] == stream
            for url in m["manifest"] for row in file_rows(url)]


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def fixture_messages(name: str) -> list[dict]:
    return [json.loads(line) for line in fixture_text(name).splitlines()]


@dataclass
class SingerRun:
    """What one run of a plugin emitted, in process or through its console script.

    In process: `error` is what stopped the run (never raised), `log` its log lines,
    `sleeps` the backoff sleeps it asked for (recorded, not slept). As a process:
    `returncode`, `stdout` and `stderr`.
    """

    messages: list[dict]
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    error: BaseException | None = None
    log: str = ""
    sleeps: list[float] = field(default_factory=list)

    def of(self, stream: str, kind: str = "RECORD") -> list[dict]:
        return of_stream(self.messages, stream, kind)

    def records(self, stream: str) -> list[dict]:
        return [m["record"] for m in self.of(stream)]

    @property
    def states(self) -> list[dict]:
        return [m["value"] for m in self.messages if m.get("type") == "STATE"]

    @property
    def last_state(self) -> dict | None:
        return self.states[-1] if self.states else None

    @property
    def ok(self) -> bool:
        return self.error is None and self.returncode == 0


class TapRun(SingerRun):
    """What one tap run emitted."""

    @property
    def result_keys(self) -> list[tuple[str, int]]:
        return [(row["job_id"], row["row_number"]) for row in self.records("job_results")]


class MapperRun(SingerRun):
    """What one mapper (or target) run emitted."""
