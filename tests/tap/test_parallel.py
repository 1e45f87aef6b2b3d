"""Concurrent result pages of one job: order, exact rows under faults, and a bounded
window. No assertion depends on timing. (Pages across jobs: test_page_pipeline.py; the
pacer: test_pacer.py and test_pacing_simulator.py.)"""

from __future__ import annotations

import random
import threading
import time

import pytest

from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tap_gtmcli.tap.page_pipeline import PagePipeline
from tap_gtmcli.tap.result_pages import ResultPage
from tests.helpers.keys import API_KEY
from tests.helpers.sandboxes import RESULTS, RESULTS_RULE
from tests.helpers.singer import result_rows
from tests.helpers.tap_runs import run_tap, sync_in_process

PAGE_BYTES = 1000


def one_job(send, window: int, expected_pages: int | None = None) -> PagePipeline[int]:
    """A pipeline that reads the pages of a single job ("job") with a fixed window."""
    return PagePipeline(prepare=lambda job, page: page, send=send, window=lambda: window,
                        workers=window, max_waiting_bytes=1 << 30)


class FakePages:
    """`send` for ResultPages: answers pages after a random pause, counting overlap."""

    def __init__(self, total_pages: int, jitter: float = 0.005, seed: int = 7) -> None:
        self.total_pages = total_pages
        self.random = random.Random(seed)
        self.jitter = jitter
        self.lock = threading.Lock()
        self.running = 0
        self.peak_running = 0
        self.release = threading.Event()
        self.release.set()

    def send(self, page: int, stop: threading.Event) -> ResultPage:
        with self.lock:
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
            pause = self.random.uniform(0, self.jitter)
        time.sleep(pause)
        self.release.wait()
        with self.lock:
            self.running -= 1
        rows = [{"row_number": (page - 1) * 10 + i + 1} for i in range(10)]
        return ResultPage(page, rows, self.total_pages, byte_size=PAGE_BYTES)


@pytest.mark.parametrize("window", [1, 3, 8])
def test_pages_come_out_in_order_whatever_order_they_finish_in(window):
    fake = FakePages(total_pages=40)
    pages = one_job(fake.send, window)
    numbers = [page.number for page in pages.pages("job")]
    assert numbers == list(range(1, 41))
    assert pages.requested == 40
    assert pages.peak_in_flight <= window
    assert fake.peak_running <= window


def test_the_byte_cap_bounds_pages_held_while_the_reader_is_busy():
    fake = FakePages(total_pages=100, jitter=0)
    pages = PagePipeline(prepare=lambda job, page: page, send=fake.send, window=lambda: 4,
                         workers=4, max_waiting_bytes=3 * PAGE_BYTES)
    reader = pages.pages("job", expected_pages=100)
    first = next(reader)
    # The reader holds page 1 and reads no further: only the window and what the cap
    # allows are fetched ahead, never the whole job.
    assert first.number == 1
    assert pages.requested <= 1 + 3 + 4  # page 1, the cap, what was in flight then
    assert [page.number for page in reader] == list(range(2, 101))
    assert pages.peak_in_flight <= 4
    assert pages.peak_waiting_bytes <= (3 + 4) * PAGE_BYTES


def test_pages_in_flight_count_against_the_cap_while_the_writer_is_the_slow_part():
    fake = FakePages(total_pages=100, jitter=0)
    pages = PagePipeline(prepare=lambda job, page: page, send=fake.send, window=lambda: 4,
                         workers=4, max_waiting_bytes=2 * PAGE_BYTES)
    reader = pages.pages("job", expected_pages=100)
    assert next(reader).number == 1  # the reader waited: the window went out
    # Every page sent so far answered and counted as waiting (a worker lowers in_flight
    # and adds its page's bytes under the pipeline's lock, which this thread does not
    # take: it looks until both show, for 10 s at most).
    deadline = time.monotonic() + 10
    while (pages.in_flight or pages.waiting_bytes < (pages.requested - 1) * PAGE_BYTES) \
            and time.monotonic() < deadline:
        time.sleep(0.001)
    sent = pages.requested
    assert pages.waiting_bytes == (sent - 1) * PAGE_BYTES >= 2 * PAGE_BYTES  # cap full
    fake.release.clear()  # from now on, requests stay in flight
    try:
        # The reader takes the pages waiting for it, each there when asked for.
        assert [next(reader).number for _ in range(2, sent + 1)] == list(range(2, sent + 1))
        # Asking for the last of them (1 waiting, 0 in flight), one request went out,
        # not the window's four: it will wait as well (1 waiting + 1 in flight = the cap).
        assert pages.requested == sent + 1
    finally:
        fake.release.set()  # (a worker left waiting would keep the test process alive)
    assert [page.number for page in reader] == list(range(sent + 1, 101))


def test_the_last_page_comes_from_the_answers_not_the_estimate():
    fake = FakePages(total_pages=3, jitter=0)
    pages = one_job(fake.send, 8)
    assert [page.number for page in pages.pages("job", expected_pages=6)] == [1, 2, 3]


def test_a_failed_page_stops_the_job_and_raises_in_the_reader():
    def send(page: int, stop: threading.Event) -> ResultPage:
        if page == 3:
            raise LookupError("page 3 failed")
        return ResultPage(page, [{"row_number": page}], 10)

    pages = one_job(send, 4)
    seen = []
    with pytest.raises(LookupError, match="page 3 failed"):
        seen.extend(page.number for page in pages.pages("job", expected_pages=10))
    assert seen == [1, 2]




def test_rows_are_exact_and_in_order_with_faults_under_concurrency(
    sandbox, tap_config, monkeypatch
):
    job_ids = sandbox.seed_jobs("validate", 2500, jobs=2)
    sandbox.add_fault_rules([
        {**RESULTS_RULE, "status": 429, "retry_after": "0", "count": 2},
        {**RESULTS_RULE, "status": 503, "body": "html", "count": 2},
        {**RESULTS_RULE, "status": 200, "body": "truncated", "count": 2},
        {**RESULTS_RULE, "body": "slow", "delay": 0.05, "count": 6},
    ])
    config = {**tap_config, "results_per_page": 100, "max_parallel_requests": 6,
              "max_retries": 8}  # more than all injected faults together
    sleeps, output = sync_in_process(config, monkeypatch)
    rows = result_rows(output)
    for job_id in job_ids:
        assert [r["row_number"] for r in rows if r["job_id"] == job_id] == list(range(1, 2501))
    assert len(rows) == 5000
    assert sleeps.count(0.0) == 2  # Retry-After: 0, honoured exactly
    assert len(sleeps) == 6
    assert sandbox.stats()["requests"][RESULTS] == 50 + 6


def test_a_job_that_vanishes_mid_way_is_skipped_with_a_warning(
    sandbox, tap_config, monkeypatch, caplog
):
    gone, kept = sandbox.seed_jobs("validate", 1000, jobs=2)
    sandbox.add_fault_rules([{"method": "GET", "path_prefix": f"/v1/jobs/{gone}/results",
                              "status": 404, "count": 100}])
    _, output = sync_in_process({**tap_config, "results_per_page": 100}, monkeypatch)
    rows = result_rows(output)
    assert {row["job_id"] for row in rows} == {kept}
    assert [row["row_number"] for row in rows] == list(range(1, 1001))
    assert f"Job {gone} vanished (404)" in caplog.text


def test_one_request_at_a_time_still_reads_everything(sandbox, tap_config, tmp_path):
    job_id = sandbox.seed_jobs("find", 730)[0]
    run = run_tap(tmp_path, {**tap_config, "results_per_page": 100,
                             "max_parallel_requests": 1})
    assert run.returncode == 0, run.stderr
    rows = run.records("job_results")
    assert [(r["job_id"], r["row_number"]) for r in rows] == [
        (job_id, n) for n in range(1, 731)]
    assert sandbox.stats()["requests"][RESULTS] == 8


def test_the_shared_gate_keeps_growth_tier_429s_to_a_handful(tmp_path):
    config = SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0, tier="growth")
    with SandboxServer(config) as server:
        job_ids = server.seed_jobs("validate", 10_000, jobs=2)
        run = run_tap(tmp_path, {"api_key": API_KEY, "api_url": server.url,
                                 "results_per_page": 200, "max_parallel_requests": 16})
        stats = server.stats()
    assert run.returncode == 0, run.stderr
    keys = [(r["job_id"], r["row_number"]) for r in run.records("job_results")]
    assert keys == [(job_id, n) for job_id in job_ids for n in range(1, 10_001)]
    assert stats["requests"][RESULTS] >= 100  # two one-second windows' worth, at least
    assert stats["rate_limited"] <= 3
