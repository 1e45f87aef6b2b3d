"""Raw-line passthrough, background creates and bad input lines."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from singer_sdk.singerlib.exceptions import InvalidInputLine

from tap_gtmcli.api.errors import SubmissionFailedError
from tap_gtmcli.submit.mapper import GTMCLIMapper
from tap_gtmcli.submit.submitter import LEDGER_STREAM
from tests.helpers.keys import API_KEY
from tests.helpers.mapper_runs import mapper_settings, run_mapper, run_mapper_cli
from tests.helpers.sandboxes import (
    creates_seen,
    fast_sandbox,
    job_items,
    sandbox_jobs,
    script_creates,
)
from tests.helpers.singer import of_stream, record, schema, state

#: Every answer of a slow sandbox comes this late: reading runs ahead of each create.
SLOW_ANSWERS_MS = 50

# Odd but valid JSON: spacing, key order, escapes, numbers no float can hold.
RAW_LINES = [
    b'{"stream":"contacts","type":"SCHEMA","schema":{"properties":{"id":{"type":"integer"}}},'
    b'"key_properties":["id"]}\n',
    b'{ "type" : "RECORD", "stream": "contacts", "record": {"id": 1, "email": "A@x.io",'
    b' "score": 1.000000000000000000000001, "big": 123456789012345678901234567890}}\n',
    b'{"type":"RECORD","stream":"contacts","record":{"email":"b@x.io","note":"caf\\u00e9 \\ud83d\\ude00"'
    b',"exp":1E+2,"neg":-0.0}}\n',
    b'{"type":"RECORD","stream":"other","record":{"x":0.1000}}\n',
    b'{"type":"STATE","value":{"bookmarks":{"contacts":{"id":2.50}}}}\n',
    b'{"type":"ACTIVATE_VERSION","stream":"other","version":1.0}\n',
    b'{"type":"RECORD","stream":"contacts","record":{"email":"c@x.io"}}',  # no final newline
]


def run_bytes(config: dict[str, Any], data: bytes) -> bytes:
    """Run the mapper in process on binary input (the reader's fast path)."""
    output = io.BytesIO()
    mapper = GTMCLIMapper(config={"api_key": API_KEY, **config}, output=output)
    try:
        mapper.listen(io.TextIOWrapper(io.BytesIO(data)))
    finally:
        run_bytes.last_output = output.getvalue()  # type: ignore[attr-defined]
    return output.getvalue()


def test_passthrough_is_byte_for_byte_the_input_line(sandbox: Any) -> None:
    settings = mapper_settings(sandbox, streams=["contacts"], batch_size=2)
    out = run_bytes(settings, b"".join(RAW_LINES))
    upstream = [line for line in out.splitlines(keepends=True) if b"gtmcli_" not in line]
    assert upstream == [*RAW_LINES[:-1], RAW_LINES[-1] + b"\n"]
    job_1, job_2 = (job["id"] for job in sandbox_jobs(sandbox))
    assert job_items(sandbox, job_1) == [{"email": "a@x.io"}, {"email": "b@x.io"}]
    assert job_items(sandbox, job_2) == [{"email": "c@x.io"}]


def test_console_script_passes_lines_through_verbatim(sandbox: Any, tmp_path: Path) -> None:
    result = run_mapper_cli(mapper_settings(sandbox, streams=["contacts"]), b"".join(RAW_LINES),
                            tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.encode().splitlines(keepends=True)
    upstream = [line for line in lines if b"gtmcli_" not in line]
    # One batch: the STATE waits for it, at the end of input.
    assert upstream == [*RAW_LINES[:4], RAW_LINES[5], RAW_LINES[6] + b"\n", RAW_LINES[4]]


def test_slow_creates_keep_the_output_of_blocking_creates(sandbox: Any) -> None:
    messages = [
        schema(),
        record(id=1, email="a@x.io"),
        state(1),
        record(id=2, email="b@x.io"),
        state(2),
        record(id=3, email="c@x.io"),
        record(id=4, email="d@x.io"),
        state(4),
        record(id=5, email="e@x.io"),
        state(5),
    ]
    # Two runs of one input: the second must send everything again, not skip it.
    settings = {"batch_size": 2, "resubmit_after_days": 0}
    instant = run_mapper(mapper_settings(sandbox, **settings), messages)
    with fast_sandbox(latency_ms=SLOW_ANSWERS_MS) as slow:
        delayed = run_mapper(mapper_settings(slow, **settings), messages)
        slow_jobs = [job["id"] for job in sandbox_jobs(slow)]

    def shape(out: list[dict]) -> list[tuple]:
        return [(m["type"], m.get("stream"), m.get("value")) for m in out]

    assert shape(delayed) == shape(instant)
    assert len(slow_jobs) == 3
    assert [m["record"]["job_id"] for m in of_stream(delayed, LEDGER_STREAM)] == slow_jobs


def test_background_create_failure_stops_without_state_or_later_creates() -> None:
    messages = [
        record(id=1, email="a@x.io"),
        record(id=2, email="b@x.io"),  # fills batch 1: its create fails in the background
        state(2),
        record(id=3, email="c@x.io"),
        record(id=4, email="d@x.io"),  # fills batch 2: never created
        state(4),
        record(id=5, email="e@x.io"),
    ]
    # Slow answers: reading runs past the full batch before the create fails.
    with fast_sandbox(latency_ms=SLOW_ANSWERS_MS) as server:
        script_creates(server, "402")
        with pytest.raises(SubmissionFailedError, match="402"):
            run_mapper(mapper_settings(server, batch_size=2), messages)
        creates = creates_seen(server)
    out = run_mapper.last_output  # type: ignore[attr-defined]
    # Exactly what a blocking create would have written: nothing after the full batch.
    assert out == messages[:2]
    assert creates == 1


def test_background_failure_of_a_later_job_keeps_the_earlier_confirmed_state() -> None:
    messages = [
        record(id=1, email="a@x.io"),
        record(id=2, email="b@x.io"),
        state(2),
        record(id=3, email="c@x.io"),
        record(id=4, email="d@x.io"),
        state(4),
        record(id=5, email="e@x.io"),
        state(5),
    ]
    with fast_sandbox(latency_ms=SLOW_ANSWERS_MS) as server:
        script_creates(server, "ok", "402")
        with pytest.raises(SubmissionFailedError, match="402"):
            run_mapper(mapper_settings(server, batch_size=2), messages)
        creates = creates_seen(server)
    out = run_mapper.last_output  # type: ignore[attr-defined]
    assert [m["value"] for m in out if m["type"] == "STATE"] == [state(2)["value"]]
    assert of_stream(out, "contacts") == messages[0:2] + messages[3:5]
    assert creates == 2


def test_bad_line_names_its_number_after_confirming_running_creates() -> None:
    good = [record(id=1, email="a@x.io"), record(id=2, email="b@x.io"), state(2)]
    text = "".join(json.dumps(m) + "\n" for m in good)
    text += json.dumps(record(id=3, email="c@x.io")) + "\n"
    text += json.dumps(state(3)) + "\n"
    text += '{"type": "RECORD", "stream": "contacts", "record": {"email": \n'
    text += json.dumps(record(id=4, email="d@x.io")) + "\n"
    with fast_sandbox(latency_ms=SLOW_ANSWERS_MS) as server:
        with pytest.raises(InvalidInputLine, match="Input line 6 is not a JSON Singer message"):
            run_mapper(mapper_settings(server, batch_size=2), text)
        creates = creates_seen(server)
    out = run_mapper.last_output  # type: ignore[attr-defined]
    # Job 1 was running: it is confirmed and its STATE goes out; STATE 3 covers record 3,
    # which was never submitted, so it does not; nothing after the bad line is read.
    assert [m["value"] for m in out if m["type"] == "STATE"] == [state(2)["value"]]
    assert of_stream(out, "contacts") == [*good[:2], record(id=3, email="c@x.io")]
    assert len(of_stream(out, LEDGER_STREAM)) == 1
    assert creates == 1


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"not json", "not a JSON Singer message"),
        (b"[1, 2]", "not a JSON Singer message"),
        (b'{"stream": "contacts"}', "a Singer message without a `type`"),
        (b'{"type": "NOPE"}', "unknown Singer message type 'NOPE'"),
    ],
)
def test_bad_lines_stop_the_console_script_with_the_line_number(
    line: bytes, problem: str, tmp_path: Path
) -> None:
    config = {"api_key": API_KEY, "api_url": "http://127.0.0.1:9"}
    data = json.dumps(state(1)).encode() + b"\n\n" + line + b"\n"
    result = run_mapper_cli(config, data, tmp_path)
    assert result.returncode == 1
    assert f"Input line 3 is {problem}" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.messages == [state(1)]
