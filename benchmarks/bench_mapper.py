"""Throughput of `mapper-gtmcli` in submit mode and its peak RSS in enrich mode.

Feeds a generated file of N upstream records (default 1,000,000) through the real
console script against a `gtmcli-sandbox` subprocess, output to /dev/null.
Submit mode runs three times: without the submission index, with a fresh SQLite index
(every item new), and again over the same index (every item seen, nothing sent); with
`--postgres-url`, twice more with the index in PostgreSQL.
Bars: >= 100,000 records/s in submit mode without the index; >= 250,000 records/s with
the SQLite index (all new and all seen) at <= 200 MB peak RSS; >= 50,000 records/s with
the PostgreSQL index (all new); < 300 MB peak RSS in enrich mode. Also prints the
index's size per 1M items, and the mapper's CPU time (user + system, both threads): on
a machine other work shares, wall time measures the neighbours too, CPU time less so.

    .venv/bin/python benchmarks/bench_mapper.py [--records N] [--skip-enrich]
        [--postgres-url postgresql://...]   # also the index in PostgreSQL (table dropped first)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg  # the postgres extra, part of dev

WORK = Path(__file__).parent / ".work"
BIN = Path(sys.executable).parent
API_KEY = "bench-key"


def generate(path: Path, records: int) -> None:
    """SCHEMA, then records (one in ten repeats an earlier email), a STATE every 10,000."""
    schema = {
        "type": "SCHEMA",
        "stream": "contacts",
        "schema": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "email": {"type": "string"},
                "first_name": {"type": "string"},
                "company": {"type": "string"},
                "score": {"type": "number"},
            },
        },
        "key_properties": ["id"],
    }
    with path.open("w") as out:
        out.write(json.dumps(schema) + "\n")
        for i in range(records):
            n = i - 7 if i % 10 == 9 else i
            out.write(
                f'{{"type":"RECORD","stream":"contacts","record":{{"id":{i},'
                f'"email":"person{n}@company{n % 997}.com","first_name":"Person",'
                f'"company":"Company {n % 997}","score":{i % 100}.5}}}}\n'
            )
            if i % 10_000 == 9_999:
                out.write(f'{{"type":"STATE","value":{{"bookmarks":{{"contacts":{{"id":{i}}}}}}}}}\n')


def start_sandbox() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            str(BIN / "gtmcli-sandbox"),
            "--port",
            "0",
            "--api-key",
            API_KEY,
            "--start-delay",
            "0",
            "--processing-rate",
            "0",
            "--credits",
            "1e12",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return process, match.group(1)
    raise RuntimeError("gtmcli-sandbox did not start")


def run_mapper(config: dict, input_path: Path) -> tuple[float, int, int]:
    """(seconds, peak RSS in KB, exit code) of one mapper run, output to /dev/null; its
    CPU seconds are kept in `LAST_CPU`."""
    config_path = WORK / "config.json"
    config_path.write_text(json.dumps(config))
    started = time.perf_counter()
    with open(os.devnull, "wb") as devnull, (WORK / "mapper.log").open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "mapper-gtmcli"), "--config", str(config_path), "--input", str(input_path)],
            stdout=devnull,
            stderr=log,
        )
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    LAST_CPU[0] = usage.ru_utime + usage.ru_stime
    return seconds, usage.ru_maxrss, os.waitstatus_to_exitcode(status)


#: CPU seconds (user + system) of the last mapper run.
LAST_CPU = [0.0]


def bench_index(base: dict, input_path: Path, records: int, postgres_url: str | None) -> None:
    """Submit mode over a fresh index (all new), then again (all seen)."""
    index_path = WORK / "submission_index.sqlite"
    for leftover in WORK.glob("submission_index.sqlite*"):
        leftover.unlink()
    two_runs(base, input_path, records, "SQLite", str(index_path))
    with sqlite3.connect(index_path) as db:
        items = db.execute("SELECT sum(length(digests)) / 16 FROM jobs").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    print_size("SQLite", items, (pages - free) * page_size)
    if postgres_url:
        with psycopg.connect(postgres_url, autocommit=True) as db:
            for table in ("gtmcli_submission_index", "gtmcli_submission_intents"):
                db.execute(f"DROP TABLE IF EXISTS {table}")
        two_runs(base, input_path, records, "PostgreSQL", postgres_url)
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute("VACUUM ANALYZE gtmcli_submission_index")
            items, size = db.execute(
                "SELECT count(*), pg_total_relation_size('gtmcli_submission_index') "
                "FROM gtmcli_submission_index"
            ).fetchone()
        print_size("PostgreSQL", items, size)


def print_size(store: str, items: int, size: int) -> None:
    print(f"{store} index: {items:,} items in {size / 1e6:.1f} MB = "
          f"{size / items:.1f} MB per 1M items")


def two_runs(base: dict, input_path: Path, records: int, store: str, index: str) -> None:
    config = {**base, "mode": "submit", "submission_index": index}
    for label in ("all new", "all seen"):
        seconds, rss_kb, code = run_mapper(config, input_path)
        if code != 0:
            sys.exit(f"submit run ({label}) failed (exit {code}); see {WORK / 'mapper.log'}")
        log = (WORK / "mapper.log").read_text()
        sent = re.search(r"Submitted \d+ GTMCLI jobs \((\d+) items\)", log)
        if store == "SQLite":
            bar = " (bar >= 250,000)"
        else:
            bar = " (bar >= 50,000)" if label == "all new" else ""
        print(
            f"submit mode, {store} index, {label}: {records:,} records in {seconds:.2f} s = "
            f"{records / seconds:,.0f} records/s{bar}, CPU {LAST_CPU[0]:.2f} s, peak RSS "
            f"{rss_kb / 1024:.0f} MB{' (bar <= 200)' if store == 'SQLite' else ''}, "
            f"items sent {int(sent.group(1)) if sent else '?':,}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--skip-enrich", action="store_true")
    parser.add_argument("--postgres-url", help="also measure a PostgreSQL index there")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    input_path = WORK / f"contacts-{args.records}.singer"
    if not input_path.exists():
        generate(input_path, args.records)
    sandbox, url = start_sandbox()
    try:
        base = {"api_key": API_KEY, "api_url": url, "streams": ["contacts"]}
        seconds, rss_kb, code = run_mapper(
            {**base, "mode": "submit", "resubmit_after_days": 0}, input_path
        )
        if code != 0:
            sys.exit(f"submit run failed (exit {code}); see {WORK / 'mapper.log'}")
        rate = args.records / seconds
        print(
            f"submit mode, no index: {args.records:,} records in {seconds:.2f} s = "
            f"{rate:,.0f} records/s (bar >= 100,000), CPU {LAST_CPU[0]:.2f} s, "
            f"peak RSS {rss_kb / 1024:.0f} MB"
        )
        bench_index(base, input_path, args.records, args.postgres_url)
        if not args.skip_enrich:
            config = {**base, "mode": "enrich", "poll_interval": 0.2, "resubmit_after_days": 0}
            seconds, rss_kb, code = run_mapper(config, input_path)
            if code != 0:
                sys.exit(f"enrich run failed (exit {code}); see {WORK / 'mapper.log'}")
            print(
                f"enrich mode: {args.records:,} records in {seconds:.2f} s = "
                f"{args.records / seconds:,.0f} records/s, peak RSS {rss_kb / 1024:.0f} MB "
                "(bar < 300 MB)"
            )
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)


if __name__ == "__main__":
    main()
