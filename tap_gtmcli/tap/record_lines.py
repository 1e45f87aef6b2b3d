"""Singer RECORD lines for a page of results, spliced from the API's own bytes.

Decoding every row into a dict and encoding it again was most of the tap's CPU time.
When a page holds only fields the schema knows (the usual case), each row's JSON is
copied as it came and the fields the tap adds (`row_number`, `job_id`, `job_type`,
`additional_fields`) are appended. Any other page (a field the schema does not know, a
row that is not an object, a value of a type the schema does not allow, an unexpected
envelope) gives None, and the caller takes the dict path, which keeps unknown fields and
misfit values in `additional_fields` and checks the page's shape.

Built with `envelope=False`, the lines are the bare rows a BATCH file holds: the same
`record` objects, without the RECORD message around them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from tap_gtmcli.tap.schema_fit import msgspec_type

#: Fields of a result row that the tap sets itself rather than reading from the API.
TAP_FIELDS = frozenset({"job_id", "job_type", "row_number", "additional_fields"})


class _RawPage(msgspec.Struct):
    """A results answer with each row left as raw JSON."""

    results: list[msgspec.Raw]
    page: int | None = None
    per_page: int | None = None


@dataclass(frozen=True)
class PageLines:
    """A page of results as RECORD lines."""

    lines: bytes
    #: `page` and `per_page` as answered (None when the answer has none).
    page: int | None
    per_page: int | None
    row_count: int
    #: A digest of the rows as served, to tell a page served twice.
    digest: bytes


class RecordLineBuilder:
    """Builds the RECORD lines of `stream` for pages whose rows hold only the fields of
    `properties`, each of its type (or, without `envelope`, the rows alone, one JSON
    object a line)."""

    def __init__(
        self, stream: str, properties: Mapping[str, Any], *, envelope: bool = True
    ) -> None:
        self._stream = stream
        self._envelope_lines = envelope
        names = sorted(set(properties) - TAP_FIELDS)
        known_row = msgspec.defstruct(
            "KnownRow", [(name, msgspec_type(properties[name]), None) for name in names],
            forbid_unknown_fields=True,
        )
        # This decode only proves that every row is an object of known fields, each of
        # its schema's type; the lines are spliced from the raw rows.
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
        """The page's RECORD lines, numbered from the page and `per_page` asked for (the
        caller checks the answer against them), or None when it needs the dict path."""
        try:
            envelope = self._envelope.decode(body)
            self._known_rows.decode(body)
        except msgspec.DecodeError:  # unknown field, odd shape: the dict path decides
            return None
        first_row = (requested_page - 1) * (envelope.per_page or per_page) + 1
        digest = hashlib.blake2b(digest_size=16)
        suffix = b',"job_id":%b,"job_type":%b,"additional_fields":null}' % (
            msgspec.json.encode(job_id), msgspec.json.encode(job_type),
        )
        if self._envelope_lines:
            suffix += b',"time_extracted":%b}' % msgspec.json.encode(extracted_at)
        lines = []
        for number, raw in enumerate(envelope.results, start=first_row):
            row = bytes(raw)
            digest.update(row)
            head = row[:-1].rstrip()  # the row without its closing brace
            separator = b"" if head == b"{" else b","
            lines.append(b'%b%b%b"row_number":%d%b' % (
                self._prefix, head, separator, number, suffix,
            ))
        lines.append(b"")
        return PageLines(b"\n".join(lines), envelope.page, envelope.per_page,
                         len(envelope.results), digest.digest())

    def encode_rows(self, rows: list[dict[str, Any]], extracted_at: str) -> bytes:
        """Rows already completed as dicts (the dict path), as lines of the same kind."""
        if not self._envelope_lines:
            return msgspec.json.Encoder().encode_lines(rows)
        return msgspec.json.Encoder().encode_lines([
            {"type": "RECORD", "stream": self._stream, "record": row,
             "time_extracted": extracted_at}
            for row in rows
        ])
