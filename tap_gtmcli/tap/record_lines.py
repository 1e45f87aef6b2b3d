"""Singer RECORD lines for a page of results, spliced from the API's own bytes.

Decoding every row into a dict and encoding it again was most of the tap's CPU time.
When a page holds only fields the schema knows (the usual case), each row's JSON is
copied as it came and the fields the tap adds (`row_number`, `job_id`, `job_type`,
`additional_fields`) are appended. Any other page (a field the schema does not know, a
row that is not an object, an unexpected envelope) gives None, and the caller takes the
dict path, which keeps unknown fields in `additional_fields`.

Built with `envelope=False`, the lines are the bare rows a BATCH file holds: the same
`record` objects, without the RECORD message around them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

#: Fields of a result row that the tap sets itself rather than reading from the API.
TAP_FIELDS = frozenset({"job_id", "job_type", "row_number", "additional_fields"})


class _RawPage(msgspec.Struct):
    """A results answer with each row left as raw JSON."""

    results: list[msgspec.Raw] = []
    page: int | None = None
    per_page: int | None = None
    total_pages: int | None = None


@dataclass(frozen=True)
class PageLines:
    """A page of results as RECORD lines."""

    lines: bytes
    page: int
    total_pages: int | None
    row_count: int


class RecordLineBuilder:
    """Builds the RECORD lines of `stream` for pages whose rows hold only `api_fields`
    (or, without `envelope`, the rows alone, one JSON object a line)."""

    def __init__(self, stream: str, api_fields: Iterable[str], *, envelope: bool = True) -> None:
        self._stream = stream
        self._envelope_lines = envelope
        names = sorted(set(api_fields) - TAP_FIELDS)
        known_row = msgspec.defstruct(
            "KnownRow", [(name, msgspec.Raw, msgspec.Raw(b"null")) for name in names],
            forbid_unknown_fields=True,
        )
        # Values stay raw: this decode only proves that every row is an object of
        # known fields, which costs a fraction of building dicts.
        self._known_rows = msgspec.json.Decoder(
            # A struct type made at run time cannot be named statically, hence the ignore.
            msgspec.defstruct("KnownRows", [("results", list[known_row], [])])  # type: ignore[valid-type]
        )
        self._envelope = msgspec.json.Decoder(_RawPage)
        self._prefix = (b'{"type":"RECORD","stream":%b,"record":' % msgspec.json.encode(stream)
                        if envelope else b"")

    def build(
        self, body: bytes, *, job_id: str, job_type: str | None, requested_page: int,
        per_page: int, extracted_at: str,
    ) -> PageLines | None:
        """The page's RECORD lines, or None when it needs the dict path."""
        try:
            envelope = self._envelope.decode(body)
            self._known_rows.decode(body)
        except msgspec.DecodeError:  # unknown field, odd shape: the dict path decides
            return None
        page = envelope.page if envelope.page is not None else requested_page
        first_row = (page - 1) * (envelope.per_page or per_page) + 1
        suffix = b',"job_id":%b,"job_type":%b,"additional_fields":null}' % (
            msgspec.json.encode(job_id), msgspec.json.encode(job_type),
        )
        if self._envelope_lines:
            suffix += b',"time_extracted":%b}' % msgspec.json.encode(extracted_at)
        lines = []
        for number, raw in enumerate(envelope.results, start=first_row):
            head = bytes(raw)[:-1].rstrip()  # the row without its closing brace
            separator = b"" if head == b"{" else b","
            lines.append(b'%b%b%b"row_number":%d%b' % (
                self._prefix, head, separator, number, suffix,
            ))
        lines.append(b"")
        return PageLines(b"\n".join(lines), page, envelope.total_pages, len(envelope.results))

    def encode_rows(self, rows: list[dict[str, Any]], extracted_at: str) -> bytes:
        """Rows already completed as dicts (the dict path), as lines of the same kind."""
        if not self._envelope_lines:
            return msgspec.json.Encoder().encode_lines(rows)
        return msgspec.json.Encoder().encode_lines([
            {"type": "RECORD", "stream": self._stream, "record": row,
             "time_extracted": extracted_at}
            for row in rows
        ])
