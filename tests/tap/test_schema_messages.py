"""One SCHEMA message per stream per run: loaders of the pipelinewise family flush their
buffers on every SCHEMA, and the SDK writes one each time a child stream syncs."""

from __future__ import annotations

from collections import Counter

from tests.helpers.sandboxes import fast_sandbox
from tests.helpers.tap_runs import run_tap_in_process, tap_settings


def test_each_stream_gets_one_schema_message_whatever_the_number_of_jobs(monkeypatch):
    with fast_sandbox() as server:
        server.seed_jobs("validate", 50, jobs=20)
        server.seed_jobs("find", 5, jobs=3)
        run = run_tap_in_process(tap_settings(server), monkeypatch)
    assert run.ok, repr(run.error)
    schemas = Counter(m["stream"] for m in run.messages if m["type"] == "SCHEMA")
    assert schemas == {"jobs": 1, "job_results": 1}
    # ... and it comes before the stream's first record.
    first = {kind: next(i for i, m in enumerate(run.messages)
                        if m.get("stream") == "job_results" and m["type"] == kind)
             for kind in ("SCHEMA", "RECORD")}
    assert first["SCHEMA"] < first["RECORD"]
    assert len(run.records("job_results")) == 20 * 50 + 3 * 5
