"""The sandbox (with --db) restarted in the middle of a tap run: the run rides it out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time

import requests

from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.sandboxes import start_sandbox_process, stop_sandbox_process
from tests.helpers.tap_runs import TAP


def test_tap_completes_exactly_across_a_sandbox_restart(tmp_path):
    db = tmp_path / "sandbox.db"
    sandbox, url = start_sandbox_process(db, api_key=API_KEY, latency_ms=50)
    port = int(url.rsplit(":", 1)[1])
    headers = {"Authorization": f"Bearer {API_KEY}"}
    seeded = requests.post(f"{url}/_sandbox/seed", json={"type": "validate", "count": 2000, "jobs": 3},
                           headers=headers, timeout=30)
    seeded.raise_for_status()
    config = tmp_path / "config.json"
    # Two pages at a time, 50 ms each: 60 pages take over a second and a half, so the
    # restart lands while the tap still has pages to read.
    config.write_text(json.dumps({"api_key": API_KEY, "api_url": url, "results_per_page": 100,
                                  "max_retries": 8, "max_parallel_requests": 2}))

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with subprocess.Popen([TAP, "--config", str(config)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as tap:
        assert tap.stdout is not None and tap.stderr is not None
        stderr_lines: list[str] = []
        drain = threading.Thread(target=lambda: stderr_lines.extend(tap.stderr), daemon=True)
        drain.start()
        rows = 0
        messages = []
        restarted = False
        for line in tap.stdout:
            message = json.loads(line)
            messages.append(message)
            if message["type"] == "RECORD" and message["stream"] == "job_results":
                rows += 1
                if rows == 1 and not restarted:
                    # SIGKILL, not SIGTERM: a clean stop keeps serving open keep-alive
                    # connections, so the tap would never notice it. Down long enough
                    # for the tap to meet refused connections, then back on its --db.
                    sandbox.kill()
                    sandbox.wait(timeout=20)
                    time.sleep(1.5)
                    sandbox, _ = start_sandbox_process(db, api_key=API_KEY, port=port)
                    restarted = True
        tap.wait(timeout=120)
        drain.join(timeout=10)
    stop_sandbox_process(sandbox)

    assert restarted
    assert tap.returncode == 0, "".join(stderr_lines)[-3000:]
    keys = [(m["record"]["job_id"], m["record"]["row_number"]) for m in messages
            if m["type"] == "RECORD" and m["stream"] == "job_results"]
    assert len(set(keys)) == 6000
    assert len(keys) == 6000  # a retried page is emitted once
    assert rows == 6000
    log = "".join(stderr_lines)
    assert re.search(r"Retry 1 of 8 for /v1/jobs/\{job_id\}/results .* after "
                     r"(127\.0\.0\.1:\d+ refused the connection|the connection (to .* failed|"
                     r"broke before the answer was complete))", log)
    assert_no_key(log)
