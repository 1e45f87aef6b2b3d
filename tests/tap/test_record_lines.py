"""RECORD lines spliced from the API's bytes equal what the dict path produces."""

from __future__ import annotations

import msgspec
import pytest
import requests

from tap_gtmcli.tap.record_lines import RecordLineBuilder
from tap_gtmcli.tap.result_pages import parse_results_page
from tap_gtmcli.tap.tap import TapGTMCLI
from tests.helpers.keys import API_KEY

SCHEMA_FIELDS = TapGTMCLI(config={"api_key": API_KEY}).streams["job_results"].schema["properties"]


def builder() -> RecordLineBuilder:
    return RecordLineBuilder("job_results", SCHEMA_FIELDS)


def build(body: bytes, page: int = 1, per_page: int = 1000):
    return builder().build(body, job_id="job_1", job_type="validate", requested_page=page,
                           per_page=per_page, extracted_at="2026-11-28T00:00:00+00:00")


@pytest.mark.parametrize("job_type", ["validate", "find"])
def test_spliced_records_equal_the_dict_path_on_real_pages(sandbox, job_type):
    job_id = sandbox.seed_jobs(job_type, 250)[0]
    body = requests.get(f"{sandbox.url}/v1/jobs/{job_id}/results", params={"page": 2, "per_page": 100},
                        headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).content
    spliced = build(body, page=2, per_page=100)
    assert spliced is not None
    assert (spliced.page, spliced.per_page, spliced.row_count) == (2, 100, 100)
    messages = [msgspec.json.decode(line) for line in spliced.lines.splitlines()]
    expected = parse_results_page(msgspec.json.decode(body), job_id="job_1", requested_page=2,
                                  per_page=100, where="GET results").rows
    for row in expected:
        row.update(job_id="job_1", job_type="validate", additional_fields=None)
    assert [m["record"] for m in messages] == expected
    assert [m["record"]["row_number"] for m in messages] == list(range(101, 201))
    assert {(m["type"], m["stream"], m["time_extracted"]) for m in messages} == {
        ("RECORD", "job_results", "2026-11-28T00:00:00+00:00")
    }


def test_empty_objects_and_spacing_still_make_valid_lines():
    spliced = build(b'{"results": [ {} , { "status" : "valid" } ], "page": 1, "total_pages": 1}')
    assert spliced is not None
    records = [msgspec.json.decode(line)["record"] for line in spliced.lines.splitlines()]
    assert records == [
        {"row_number": 1, "job_id": "job_1", "job_type": "validate", "additional_fields": None},
        {"status": "valid", "row_number": 2, "job_id": "job_1", "job_type": "validate",
         "additional_fields": None},
    ]


@pytest.mark.parametrize(
    "body",
    [
        b'{"results": [{"email": "a@b.c", "priority": "high"}]}',  # a field GTMCLI added
        b'{"results": [{"email": "a@b.c", "row_number": 7}]}',  # a field the tap sets
        b'{"results": [1]}',  # a row that is not an object
        b'{"results": [], "page": "1"}',  # an envelope of another shape
        b'{"results": [{"email": "a@b.c"}',  # truncated
    ],
    ids=["unknown-field", "tap-field", "not-an-object", "odd-envelope", "truncated"],
)
def test_pages_the_splice_cannot_vouch_for_take_the_dict_path(body):
    assert build(body) is None


@pytest.mark.parametrize("job_type", ["validate", "find"])
def test_bare_lines_for_batch_files_are_the_records_of_the_record_lines(sandbox, job_type):
    job_id = sandbox.seed_jobs(job_type, 150)[0]
    body = requests.get(f"{sandbox.url}/v1/jobs/{job_id}/results", params={"page": 1, "per_page": 100},
                        headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).content
    bare = RecordLineBuilder("job_results", SCHEMA_FIELDS, envelope=False).build(
        body, job_id="job_1", job_type="validate", requested_page=1, per_page=100,
        extracted_at="2026-11-28T00:00:00+00:00")
    enveloped = build(body, per_page=100)  # job_1, validate, the same page
    assert bare is not None and enveloped is not None
    rows = [msgspec.json.decode(line) for line in bare.lines.splitlines()]
    assert rows == [msgspec.json.decode(line)["record"] for line in enveloped.lines.splitlines()]
    assert bare.lines.endswith(b"}\n") and bare.row_count == 100


def test_rows_of_the_dict_path_encode_to_the_same_kind_of_line():
    rows = [{"email": "a@b.c", "row_number": 1, "additional_fields": {"priority": "high"}}]
    bare = RecordLineBuilder("job_results", SCHEMA_FIELDS, envelope=False)
    assert msgspec.json.decode(bare.encode_rows(rows, "2026-11-28T00:00:00+00:00")) == rows[0]
    record = msgspec.json.decode(builder().encode_rows(rows, "2026-11-28T00:00:00+00:00"))
    assert record == {"type": "RECORD", "stream": "job_results", "record": rows[0],
                      "time_extracted": "2026-11-28T00:00:00+00:00"}
