"""Shared machinery of the reliability matrix.

- Run helpers for the tap and the mapper, in process (sleeps recorded, not slept) and
  through the console scripts. In-process helpers hand what the run printed to the key
  scan (tests/key_scan.py), which fails the test if the API key appears anywhere in it;
  console-script runs are scanned by the scan's own `subprocess.Popen` hook.
- Truth oracles: the jobs the mapper must create for an input (an independent model of
  the item and dedupe rules of README "Submit mode"), and the sandbox's view of what it
  received.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.retry import RetryPolicy
from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tests import key_scan
from tests.key_scan import TEST_API_KEY

API_KEY = TEST_API_KEY
BIN = Path(sys.executable).parent
TAP = str(BIN / "tap-gtmcli")
MAPPER = str(BIN / "mapper-gtmcli")
SANDBOX = str(BIN / "gtmcli-sandbox")
LEDGER = "gtmcli_submissions"
REJECTED = "gtmcli_rejected"
CLI_ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def register_output(label: str, data: Any) -> None:
    """Remember one output of an in-process run for the key scan (tests/key_scan.py)."""
    key_scan.record(label, data)


#: The key occurs in none of the given outputs (str, bytes or JSON-able).
assert_no_secret = key_scan.assert_no_key


# --------------------------------------------------------------------------- sandbox


def fast_sandbox(**settings: Any) -> SandboxServer:
    """An in-process sandbox (use as a context manager) whose jobs complete at once."""
    config = {"api_key": API_KEY, "start_delay": 0, "processing_rate": 0, **settings}
    return SandboxServer(SandboxConfig(**config))


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with fast_sandbox() as server:
        yield server


def sandbox_jobs(server: SandboxServer | str) -> list[dict]:
    """Every job the sandbox lists, oldest first (admin view through the public API)."""
    url = server if isinstance(server, str) else server.url
    client = GTMCLIClient(api_url=url, api_key=API_KEY, retry=RetryPolicy(max_retries=0))
    try:
        return list(reversed(list(client.list_jobs())))
    finally:
        client.close()


def job_items(server: SandboxServer | str, job_id: str) -> list[dict]:
    """The items of one job exactly as submitted (in process, or the admin route)."""
    if not isinstance(server, str):
        return server.job_items(job_id)
    import requests

    answer = requests.get(f"{server}/_sandbox/jobs/{job_id}/items",
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    answer.raise_for_status()
    return list(answer.json()["items"])


def received_items(
    server: SandboxServer | str, job_ids: Iterable[str] | None = None
) -> list[tuple]:
    """Every item the sandbox received, across its jobs (or the given ones), as tuples."""
    ids = [job["id"] for job in sandbox_jobs(server)] if job_ids is None else list(job_ids)
    return [item_key(item) for job_id in ids for item in job_items(server, job_id)]


def received_jobs(
    server: SandboxServer | str, skip: Iterable[str] = ()
) -> list[tuple[str, tuple]]:
    """(type, items) of every job the sandbox holds, oldest first."""
    skipped = set(skip)
    return [
        (job["type"], tuple(item_key(item) for item in job_items(server, job["id"])))
        for job in sandbox_jobs(server)
        if job["id"] not in skipped
    ]


def item_key(item: dict) -> tuple:
    if set(item) == {"email"}:
        return ("validate", item["email"])
    return ("find", item["first_name"], item["last_name"], item["domain"])


# --------------------------------------------------------------------------- truth oracle


def oracle_item(record: Any, job_type: str = "auto") -> tuple | None:
    """README "Submit mode": an email makes a validate item, else first/last/domain a find
    item; values must be non-empty strings once stripped; items are lowercased."""
    if not isinstance(record, dict):
        return None

    def usable(name: str) -> str | None:
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip().lower()
        return None

    if job_type in ("auto", "validate"):
        email = usable("email")
        if email is not None:
            return ("validate", email)
        if job_type == "validate":
            return None
    names = [usable(name) for name in ("first_name", "last_name", "domain")]
    if all(name is not None for name in names):
        return ("find", *names)
    return None


@dataclass
class Truth:
    """What the mapper must do with an input."""

    jobs: list[tuple[str, tuple]]  # (type, distinct items in first-seen order) per job
    acted_on: int  # records of acted-on streams
    submittable: int  # of those, records that make an item
    rejected: int

    @property
    def items(self) -> Counter:
        return Counter(item for _, items in self.jobs for item in items)


def mapper_truth(
    messages: list[Any], batch_size: int, streams: tuple[str, ...] = ("*",)
) -> Truth:
    """The jobs the README's batching rule yields: one open batch per (stream, job type)
    of distinct items, submitted when it holds `batch_size` items and at the end."""
    import fnmatch

    open_batches: dict[tuple[str, str], dict[tuple, None]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    jobs: list[tuple[str, tuple]] = []
    acted = submittable = rejected = 0
    for seq, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("type") != "RECORD":
            continue
        stream = message.get("stream")
        if not isinstance(stream, str) or not any(
            fnmatch.fnmatchcase(stream, pattern) for pattern in streams
        ):
            continue
        acted += 1
        item = oracle_item(message.get("record"))
        if item is None:
            rejected += 1
            continue
        submittable += 1
        key = (stream, item[0])
        batch = open_batches.setdefault(key, {})
        first_seen.setdefault(key, seq)
        batch[item] = None
        if len(batch) >= batch_size:
            jobs.append((item[0], tuple(batch)))
            del open_batches[key]
            del first_seen[key]
    for key in sorted(open_batches, key=first_seen.__getitem__):
        jobs.append((key[1], tuple(open_batches[key])))
    return Truth(jobs=jobs, acted_on=acted, submittable=submittable, rejected=rejected)


# --------------------------------------------------------------------------- input


def contacts_input(
    count: int, state_every: int, *, start: int = 0, schema: bool = True, stream: str = "contacts"
) -> list[dict]:
    """Upstream messages: records 1..count with distinct emails, a STATE every
    `state_every` records whose value carries the position (like a tap's bookmark)."""
    messages: list[dict] = []
    if schema:
        messages.append({
            "type": "SCHEMA", "stream": stream, "key_properties": ["id"],
            "schema": {"type": "object", "properties": {
                "id": {"type": "integer"}, "email": {"type": ["string", "null"]}}},
        })
    for position in range(start + 1, count + 1):
        messages.append({"type": "RECORD", "stream": stream,
                         "record": {"id": position, "email": f"person{position}@example{position % 7}.com"}})
        if position % state_every == 0 or position == count:
            messages.append(position_state(position))
    return messages


def position_state(position: int) -> dict:
    return {"type": "STATE", "value": {"bookmarks": {"contacts": {"position": position}}}}


def state_position(state_value: dict | None) -> int:
    if not state_value:
        return 0
    return int(state_value["bookmarks"]["contacts"]["position"])


def replay_after(messages: list[dict], state_value: dict | None) -> list[dict]:
    """What the upstream tap sends when resumed from a STATE: SCHEMA, then the rest."""
    position = state_position(state_value)
    schema = [m for m in messages if m["type"] == "SCHEMA"]
    rest = [m for m in messages if m["type"] != "SCHEMA" and _position_of(m) > position]
    return schema + rest


def _position_of(message: dict) -> int:
    if message["type"] == "RECORD":
        return int(message["record"]["id"])
    if message["type"] == "STATE":
        return state_position(message["value"])
    return 0


def singer_text(messages: Iterable[Any]) -> str:
    return "".join((m if isinstance(m, str) else json.dumps(m)) + "\n" for m in messages)


# --------------------------------------------------------------------------- mapper runs


@dataclass
class SingerRun:
    """What one run of a plugin emitted (in process or through the console script)."""

    messages: list[dict]
    error: BaseException | None = None
    log: str = ""
    sleeps: list[float] = field(default_factory=list)
    returncode: int = 0
    stderr: str = ""

    def of(self, stream: str, kind: str = "RECORD") -> list[dict]:
        return [m for m in self.messages if m.get("type") == kind and m.get("stream") == stream]

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


class MapperRun(SingerRun):
    """What one mapper run emitted."""


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def mapper_settings(server: SandboxServer | str, **settings: Any) -> dict[str, Any]:
    url = server if isinstance(server, str) else server.url
    return {"api_key": API_KEY, "api_url": url, "request_timeout": 2, "max_retries": 3, **settings}


def run_mapper_in_process(config: dict[str, Any], messages: Iterable[Any]) -> MapperRun:
    """Run GTMCLIMapper in this process with a client whose retry sleeps are recorded,
    not slept. A run-stopping error is returned in `error`, never raised."""
    from tap_gtmcli.submit.mapper import GTMCLIMapper

    sleeps: list[float] = []
    client = GTMCLIClient(
        api_url=config["api_url"], api_key=config["api_key"],
        timeout=float(config.get("request_timeout", 60)),
        retry=RetryPolicy(max_retries=int(config.get("max_retries", 5))),
        sleep=sleeps.append,
    )
    output = io.BytesIO()
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    error: BaseException | None = None
    try:
        mapper = GTMCLIMapper(config=config, output=output, client=client)
        try:
            mapper.listen(io.StringIO(singer_text(messages)))
        except Exception as raised:  # the run stopped: keep what it wrote
            error = raised
        finally:
            try:
                mapper.output_writer.flush()
            finally:
                client.close()
    finally:
        root.removeHandler(capture)
    text = output.getvalue().decode()
    run = MapperRun([json.loads(line) for line in text.splitlines() if line.strip()],
                    error, "\n".join(capture.lines), sleeps)
    register_output("mapper stdout", text)
    register_output("mapper log", run.log)
    register_output("mapper error", repr(error))
    return run


def run_mapper_cli(
    config: dict[str, Any], messages: Iterable[Any] | bytes, tmp_path: Path, timeout: float = 120
) -> MapperRun:
    """Run the `mapper-gtmcli` console script with the messages on stdin."""
    config_path = tmp_path / "mapper-config.json"
    config_path.write_text(json.dumps(config))
    data = messages if isinstance(messages, bytes) else singer_text(messages).encode()
    done = subprocess.run([MAPPER, "--config", str(config_path)], input=data,
                          capture_output=True, timeout=timeout, env=CLI_ENV, check=False)
    register_output("mapper-cli stdout", done.stdout)
    register_output("mapper-cli stderr", done.stderr)
    lines = done.stdout.decode().splitlines()
    return MapperRun([json.loads(line) for line in lines if line.strip()],
                     returncode=done.returncode, stderr=done.stderr.decode())


# --------------------------------------------------------------------------- tap runs


class TapRun(SingerRun):
    """What one tap run emitted."""

    @property
    def result_keys(self) -> list[tuple[str, int]]:
        return [(row["job_id"], row["row_number"]) for row in self.records("job_results")]


def run_tap_in_process(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, state: dict | None = None
) -> TapRun:
    """Sync the tap in this process; backoff sleeps are recorded, not slept."""
    from contextlib import redirect_stdout

    from tap_gtmcli.tap.tap import TapGTMCLI

    sleeps: list[float] = []
    monkeypatch.setattr("tap_gtmcli.tap.client.sleep_unless_stopped",
                        lambda seconds, _stop, _what: sleeps.append(seconds))
    out = io.StringIO()
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    error: BaseException | None = None
    try:
        with redirect_stdout(out):
            try:
                TapGTMCLI(config=config, state=state).sync_all()
            except Exception as raised:
                error = raised
    finally:
        root.removeHandler(capture)
    text = out.getvalue()
    run = TapRun([json.loads(line) for line in text.splitlines() if line.strip()],
                 error, "\n".join(capture.lines), sleeps)
    register_output("tap stdout", text)
    register_output("tap log", run.log)
    register_output("tap error", repr(error))
    return run


def run_tap_cli(
    config: dict[str, Any], tmp_path: Path, state: dict | None = None, timeout: float = 120
) -> TapRun:
    config_path = tmp_path / "tap-config.json"
    config_path.write_text(json.dumps(config))
    command = [TAP, "--config", str(config_path)]
    if state is not None:
        state_path = tmp_path / "tap-state.json"
        state_path.write_text(json.dumps(state))
        command += ["--state", str(state_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=CLI_ENV, check=False)
    register_output("tap-cli stdout", done.stdout)
    register_output("tap-cli stderr", done.stderr)
    messages = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return TapRun(messages, returncode=done.returncode, stderr=done.stderr)


def tap_settings(server: SandboxServer | str, **settings: Any) -> dict[str, Any]:
    url = server if isinstance(server, str) else server.url
    return {"api_key": API_KEY, "api_url": url, "max_retries": 3, **settings}


def seeded_truth(server: SandboxServer) -> set[tuple[str, int]]:
    """(job_id, row_number) of every result row the sandbox can serve."""
    keys: set[tuple[str, int]] = set()
    for job in sandbox_jobs(server):
        if job["status"] == "completed":
            keys |= {(job["id"], n) for n in range(1, job["total"] + 1)}
    return keys


def start_sandbox_process(
    db: Path, *, api_key: str = API_KEY, port: int = 0, latency_ms: int = 0
) -> tuple[subprocess.Popen, str]:
    """`gtmcli-sandbox --db DB` as a process of its own; returns it and its URL."""
    process = subprocess.Popen(
        [SANDBOX, "--port", str(port), "--api-key", api_key, "--db", str(db),
         "--start-delay", "0", "--processing-rate", "0", "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert match, f"unexpected first line: {line!r}"
    return process, match[0]


def stop_sandbox_process(process: subprocess.Popen) -> None:
    """SIGTERM, then wait for a clean exit."""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)
