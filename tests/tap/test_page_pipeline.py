"""Result pages read ahead across jobs: order, failures, the byte cap, the tap over
many small jobs, and closing the read-ahead while workers wait (a backoff, a hold by the
pacer). No assertion depends on the machine's timing."""

from __future__ import annotations

import random
import threading
import time

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from tap_gtmcli.api.errors import GTMCLICancelledError
from tap_gtmcli.tap.page_pipeline import PagePipeline
from tap_gtmcli.tap.result_pages import ResultPage
from tap_gtmcli.tap.tap import TapGTMCLI
from tests.helpers.keys import API_KEY
from tests.helpers.tap_runs import run_tap

RESULTS = "GET /v1/jobs/{id}/results"
PAGE_BYTES = 1000


# --- result pages read ahead across jobs ------------------------------------------------


class FakeJobs:
    """`send` for the pipeline: each job's pages, answered after a random pause."""

    def __init__(self, pages_per_job: dict[str, int], jitter: float = 0.003, seed: int = 3,
                 failing: frozenset[tuple[str, int]] = frozenset()) -> None:
        self.pages_per_job = pages_per_job
        self.random = random.Random(seed)
        self.jitter = jitter
        self.failing = failing
        self.lock = threading.Lock()
        self.sent: list[tuple[str, int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def prepare(self, job: str, page: int) -> tuple[str, int]:
        self.sent.append((job, page))  # the reading thread prepares, in order
        return job, page

    def send(self, request: tuple[str, int], stop: threading.Event) -> ResultPage:
        job, page = request
        with self.lock:
            pause = self.random.uniform(0, self.jitter)
        time.sleep(pause)
        self.gate.wait()
        if (job, page) in self.failing:
            raise LookupError(f"{job} page {page} failed")
        total = self.pages_per_job[job]
        rows = [{"job": job, "row_number": (page - 1) * 10 + i + 1} for i in range(10)]
        return ResultPage(page, rows if page <= total else [], total, byte_size=PAGE_BYTES)

    def pipeline(self, window: int, max_waiting_bytes: int = 1 << 30) -> PagePipeline:
        return PagePipeline(prepare=self.prepare, send=self.send, window=lambda: window,
                            workers=window, max_waiting_bytes=max_waiting_bytes)


def read_all(pipeline: PagePipeline, jobs: list[str]) -> list[tuple[str, int]]:
    return [(job, page.number) for job in jobs for page in pipeline.pages(job)]


def test_pages_come_out_in_job_then_page_order_whatever_order_they_finish_in():
    pages = {f"job{n:02}": 1 + n % 4 for n in range(30)}
    fake = FakeJobs(pages)
    pipeline = fake.pipeline(window=8)
    jobs = list(pages)
    pipeline.plan([(job, count) for job, count in pages.items()])
    expected = [(job, page) for job in jobs for page in range(1, pages[job] + 1)]
    assert read_all(pipeline, jobs) == expected
    assert fake.sent == expected  # requested in the same order, each once
    assert pipeline.peak_in_flight <= 8
    pipeline.close()


def test_later_jobs_are_requested_while_the_first_is_still_awaited():
    pages = {f"job{n}": 1 for n in range(6)}
    fake = FakeJobs(pages, jitter=0)
    fake.gate.clear()  # no answer comes back until released
    pipeline = fake.pipeline(window=4)
    pipeline.plan([(job, 1) for job in pages])
    reader = pipeline.pages("job0")
    got: list[ResultPage] = []
    thread = threading.Thread(target=lambda: got.append(next(reader)))
    thread.start()
    while pipeline.in_flight < 4:
        time.sleep(0.001)
    # One-page jobs: the window is filled with the pages of the next jobs, not idle.
    assert fake.sent == [("job0", 1), ("job1", 1), ("job2", 1), ("job3", 1)]
    fake.gate.set()
    thread.join()
    assert got[0].number == 1
    assert read_all(pipeline, list(pages)[1:]) == [(f"job{n}", 1) for n in range(1, 6)]
    pipeline.close()


def test_more_pages_than_the_estimate_are_read_and_fewer_stop_the_job():
    fake = FakeJobs({"a": 3, "b": 1, "c": 2})
    pipeline = fake.pipeline(window=6)
    # "a" was estimated at one page, "b" at three: the answers' total_pages decide.
    pipeline.plan([("a", 1), ("b", 3), ("c", None)])
    assert read_all(pipeline, ["a", "b", "c"]) == [
        ("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1), ("c", 2)]
    pipeline.close()


def test_a_failed_page_surfaces_at_its_turn_and_later_jobs_still_read():
    fake = FakeJobs({"a": 2, "b": 3, "c": 1}, failing=frozenset({("b", 2)}))
    pipeline = fake.pipeline(window=6)
    pipeline.plan([("a", 2), ("b", 3), ("c", 1)])
    assert [page.number for page in pipeline.pages("a")] == [1, 2]
    seen = []
    with pytest.raises(LookupError, match="b page 2 failed"):
        seen.extend(page.number for page in pipeline.pages("b"))
    assert seen == [1]
    assert [page.number for page in pipeline.pages("c")] == [1]
    pipeline.close()


def test_jobs_planned_but_not_asked_for_are_dropped_and_unplanned_ones_read():
    fake = FakeJobs({"a": 1, "b": 2, "c": 1, "z": 2})
    pipeline = fake.pipeline(window=2)
    pipeline.plan([("a", 1), ("b", 2), ("c", 1)])
    assert [page.number for page in pipeline.pages("c")] == [1]
    assert [page.number for page in pipeline.pages("z", 2)] == [1, 2]
    pipeline.close()


def test_the_byte_cap_holds_across_jobs_while_the_reader_is_slow():
    pages = {f"job{n:02}": 3 for n in range(40)}
    fake = FakeJobs(pages, jitter=0.001)
    pipeline = fake.pipeline(window=4, max_waiting_bytes=10 * PAGE_BYTES)
    pipeline.plan([(job, 3) for job in pages])
    read = []
    for job in pages:
        for page in pipeline.pages(job):
            read.append((job, page.number))
            time.sleep(0.002)  # the reader is the slow part: pages pile up ahead
    assert len(read) == 120
    # No request goes out once the cap is full: at most the cap, plus the pages that
    # were already in flight then (the window).
    assert 10 * PAGE_BYTES <= pipeline.peak_waiting_bytes <= (10 + 4) * PAGE_BYTES
    assert pipeline.waiting_bytes == 0
    pipeline.close()


# --- the tap over many jobs -------------------------------------------------------------


def test_many_small_jobs_keep_order_state_after_each_job_and_exact_requests(
    sandbox, tap_config, tmp_path
):
    job_ids = []
    for _ in range(25):
        job_ids += sandbox.seed_jobs("find", 120)
        sandbox.advance_clock(1)
    sandbox.reset_stats()
    run = run_tap(tmp_path, {**tap_config, "results_per_page": 50})
    assert run.returncode == 0, run.stderr
    assert API_KEY not in run.stdout + run.stderr
    # Per job, oldest first: its rows in order, its record, then a STATE naming it.
    kinds = []
    for message in run.messages:
        if message["type"] == "RECORD":
            record = message["record"]
            kinds.append(("job", record["id"]) if message["stream"] == "jobs"
                         else ("row", record["job_id"], record["row_number"]))
        elif message["type"] == "STATE":
            bookmarks = message["value"]["bookmarks"]["jobs"]
            kinds.append(("state", bookmarks.get("newest_ids", [None])[-1]))
    expected = []
    for job_id in job_ids:
        # The SDK syncs a job's children before it writes the job's own record.
        expected += [*[("row", job_id, n) for n in range(1, 121)], ("job", job_id),
                     ("state", job_id)]
    # (A STATE may be repeated, at the end of the stream; each job has one after it.)
    deduplicated = [kind for index, kind in enumerate(kinds)
                    if kind != ("state", None) and (index == 0 or kind != kinds[index - 1])]
    assert deduplicated == expected
    assert sandbox.stats()["requests"] == {"GET /v1/jobs": 1, RESULTS: 25 * 3}


# --- closing the read-ahead while workers wait ------------------------------------------

#: How long a test waits for a thread that should end at once: only a guard against a
#: hang (the waits cut short below are 30 s), never a measure of speed.
HANG_GUARD = 10.0


def test_close_sets_the_stop_of_every_request_sent_and_wakes_a_waiting_reader():
    stops: list[threading.Event] = []
    woken: list[bool] = []

    def send(request: tuple[str, int], stop: threading.Event) -> ResultPage:
        stops.append(stop)
        # A retry's wait: the answer only comes after 30 s, unless the stop is set.
        woken.append(stop.wait(30))
        raise GTMCLICancelledError("stopped")

    pipeline = PagePipeline(prepare=lambda job, page: (job, page), send=send,
                            window=lambda: 2, workers=2, max_waiting_bytes=1 << 20)
    raised: list[BaseException] = []

    def read_in_thread(job: str) -> threading.Thread:
        def read() -> None:
            try:
                list(pipeline.pages(job))
            except BaseException as error:  # what the reader got, checked below
                raised.append(error)
        thread = threading.Thread(target=read)
        thread.start()
        return thread

    pipeline.plan([("a", 1), ("b", 1)])
    reader = read_in_thread("a")
    while len(stops) < 2:  # both pages sent, their workers waiting
        time.sleep(0.001)
    pipeline.close()
    reader.join(HANG_GUARD)
    assert not reader.is_alive()
    assert [type(error) for error in raised] == [GTMCLICancelledError]
    assert "job a" in str(raised[0])
    while len(woken) < 2:
        time.sleep(0.001)
    assert woken == [True, True]  # woken by the stop, not after 30 s
    assert stops[0] is stops[1]
    # A job read after a close starts afresh, with a stop of its own.
    pipeline.plan([("c", 1)])
    later = read_in_thread("c")
    while len(stops) < 3:
        time.sleep(0.001)
    assert stops[2] is not stops[0] and not stops[2].is_set()
    pipeline.close()
    later.join(HANG_GUARD)
    assert not later.is_alive()
    assert [type(error) for error in raised] == [GTMCLICancelledError] * 2


class WatchedStream:
    """The tap's job_results stream against the sandbox, telling when a page worker
    starts a backoff and when it returns."""

    def __init__(self, tap_config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
        from tap_gtmcli.tap import client

        self.waits: list[float] = []
        self.waiting = threading.Event()
        self.returned = threading.Event()
        self.worker_raised: list[BaseException] = []
        backoff_sleep = client.sleep_unless_stopped

        def watched_sleep(seconds: float, stop: threading.Event | None, what: str) -> None:
            self.waits.append(seconds)
            self.waiting.set()
            backoff_sleep(seconds, stop, what)

        monkeypatch.setattr(client, "sleep_unless_stopped", watched_sleep)
        self.tap = TapGTMCLI(config=tap_config)
        self.stream = self.tap.streams["job_results"]
        fetch_page = self.stream.fetch_page

        def watched_fetch(*args, **kwargs):  # type: ignore[no-untyped-def]
            try:
                return fetch_page(*args, **kwargs)
            except BaseException as error:
                self.worker_raised.append(error)
                raise
            finally:
                self.returned.set()

        self.stream.fetch_page = watched_fetch  # type: ignore[method-assign]
        self.reader_raised: list[BaseException] = []

    def start_reading(self, job_id: str) -> threading.Thread:
        context = {"job_id": job_id, "job_type": "validate", "rows": 10}
        self.stream.read_ahead([context])

        def read() -> None:
            try:
                list(self.stream.result_pages(context))
            except BaseException as error:
                self.reader_raised.append(error)

        reader = threading.Thread(target=read)
        reader.start()
        return reader


def test_stopping_the_read_ahead_cuts_short_a_worker_sleeping_out_retry_after(
    sandbox, tap_config, monkeypatch
):
    job_id = sandbox.seed_jobs("validate", 10)[0]
    sandbox.add_fault_rules([{"method": "GET", "path_prefix": f"/v1/jobs/{job_id}/results",
                              "status": 503, "retry_after": "30", "count": 5}])
    watched = WatchedStream(tap_config, monkeypatch)
    reader = watched.start_reading(job_id)
    assert watched.waiting.wait(HANG_GUARD)  # answered 503: sleeping out Retry-After: 30
    assert watched.waits == [30.0]
    watched.stream.stop_reading_ahead()  # the run stops (an error in a later job, ...)
    assert watched.returned.wait(HANG_GUARD)
    reader.join(HANG_GUARD)
    assert not reader.is_alive()
    assert [type(e) for e in watched.worker_raised] == [GTMCLICancelledError]
    assert [type(e) for e in watched.reader_raised] == [GTMCLICancelledError]
    assert watched.waits == [30.0]
    # One request, the one answered 503: none after the stop.
    assert sandbox.stats()["requests"][RESULTS] == 1


def test_stopping_the_read_ahead_releases_a_worker_held_by_the_pacer(
    sandbox, tap_config, monkeypatch
):
    job_id = sandbox.seed_jobs("validate", 10)[0]
    watched = WatchedStream(tap_config, monkeypatch)
    pacer = watched.tap.pacer
    assert watched.stream.pacer is pacer  # the tap's one pacer, shared by its streams
    # Another request was answered 429 with Retry-After: 30: every other one is held.
    refused = requests.Response()
    refused.status_code, refused.headers = 429, CaseInsensitiveDict({"Retry-After": "30"})
    pacer.observe(pacer.acquire(), refused)
    reader = watched.start_reading(job_id)
    deadline = time.monotonic() + HANG_GUARD
    while not pacer.waiting and time.monotonic() < deadline:
        time.sleep(0.001)
    assert pacer.waiting == 1  # the page's worker, held
    watched.stream.stop_reading_ahead()
    assert watched.returned.wait(HANG_GUARD)
    reader.join(HANG_GUARD)
    assert not reader.is_alive()
    assert [type(e) for e in watched.worker_raised] == [GTMCLICancelledError]
    assert "held by the pacer" in str(watched.worker_raised[0])
    assert watched.waits == []  # no backoff: it never got as far as a try
    assert pacer.waiting == 0
    assert sandbox.stats()["requests"].get(RESULTS, 0) == 0  # never sent


def test_a_page_waiting_for_its_turn_counts_the_bytes_it_holds(sandbox, tap_config):
    """The byte cap counts the RECORD lines a page holds, not the (smaller) answer."""
    job_id = sandbox.seed_jobs("validate", 300)[0]
    stream = TapGTMCLI(config=tap_config).streams["job_results"]
    context = {"job_id": job_id, "job_type": "validate", "rows": 300}
    request = stream.prepare_page_request(context, 1)
    page = stream.fetch_page(1, request, context)
    assert page.row_count == 300 and page.record_lines is not None
    assert page.byte_size == len(page.record_lines)
    answer = stream.send_with_retries(stream.prepare_page_request(context, 1), context)
    assert page.byte_size > len(answer.content)
