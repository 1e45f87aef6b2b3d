"""Prints what the demo loaded into DuckDB: `python warehouse_summary.py WAREHOUSE`.

Run with the interpreter of the `target-duckdb` plugin, so the file is read by the same
DuckDB version that wrote it; hence only the standard library and `duckdb` here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import duckdb

SCHEMA = "gtmcli"
MAX_CELL = 36


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A small fixed-width table."""
    print(f"\n{title}")
    cells = [[("" if value is None else str(value))[:MAX_CELL] for value in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in cells])
              for i, header in enumerate(headers)]
    for row in [list(headers), ["-" * width for width in widths], *cells]:
        padded = (value.ljust(width) for value, width in zip(row, widths, strict=True))
        print("  " + "  ".join(padded))
    if not cells:
        print("  (no rows)")


def table_exists(connection: Any, schema: str, table: str) -> bool:
    """Whether SCHEMA.TABLE exists."""
    found = connection.execute(
        "select count(*) from information_schema.tables where table_schema = ? "
        "and table_name = ?", [schema, table],
    ).fetchone()
    return bool(found and found[0])


def main(argv: Sequence[str]) -> int:
    """Print the summary; 1 if the warehouse has no jobs table."""
    path = argv[0]
    connection = duckdb.connect(path, read_only=True)
    if not table_exists(connection, SCHEMA, "jobs"):
        print(f"no gtmcli.jobs table in {path}", file=sys.stderr)
        return 1
    q = connection.execute
    print_table(
        "Jobs by type and status",
        ["type", "status", "jobs", "items", "credits"],
        q("select type, status, count(*), sum(total), round(sum(coalesce(credits_used, 0)), 2) "
          "from gtmcli.jobs group by 1, 2 order by 1, 2").fetchall(),
    )
    if table_exists(connection, SCHEMA, "job_results"):
        print_table(
            "Results by job type and status",
            ["job type", "status", "rows"],
            q("select job_type, status, count(*) from gtmcli.job_results "
              "group by 1, 2 order by 1, 3 desc, 2").fetchall(),
        )
        print_table(
            "Results by provider",
            ["provider", "rows"],
            q("select provider, count(*) from gtmcli.job_results "
              "group by 1 order by 2 desc, 1").fetchall(),
        )
    credits = q("select round(sum(coalesce(credits_used, 0)), 2) from gtmcli.jobs").fetchone()
    print(f"\nCredits used: {credits[0] if credits else 0}")
    if table_exists(connection, SCHEMA, "contacts"):
        print_table(
            "Enriched contacts (a few of each GTMCLI status)",
            ["id", "email", "name", "domain", "gtmcli_status", "gtmcli_provider",
             "gtmcli_email", "confidence"],
            q("""
                select id, email, first_name || ' ' || last_name, domain, gtmcli_status,
                       gtmcli_provider, gtmcli_email, gtmcli_confidence
                from (
                    select *, row_number() over (
                        partition by gtmcli_status order by cast(id as integer)) as n
                    from gtmcli.contacts where gtmcli_status is not null
                ) where n <= 2 order by gtmcli_status, cast(id as integer)
            """).fetchall(),
        )
        counts = q("select count(*), count(gtmcli_status) from gtmcli.contacts").fetchone()
        if counts:
            print(f"\nContacts: {counts[0]}, enriched: {counts[1]}, "
                  f"not sent (see gtmcli.gtmcli_rejected): {counts[0] - counts[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
