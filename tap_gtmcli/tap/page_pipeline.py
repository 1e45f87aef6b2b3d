"""Result pages of many jobs, requested ahead across job boundaries and handed to the
reader strictly in job order, then page order.

A run's usual shape is many small jobs: one page each, read one after another, is a
full round trip per job with nothing else in flight. Here the jobs to read are planned
up front (in the order they will be emitted) and their pages go out in that same order
while earlier jobs are still being written:

- A page of a later job is never requested before every page planned so far of an
  earlier one; pages a job turns out to have beyond its estimate are requested next.
- The reader takes one job at a time, its pages in order. A failed page surfaces only
  when the reader reaches it, so every job before it is written (and its STATE after
  it) exactly as if nothing had been read ahead.
- At most `window()` requests are in flight. Pages fetched and waiting for their turn
  are capped in bytes: no request goes out while they fill the cap. While the reader
  waits for its next page the network is the slow part: pages in flight are bounded by
  the window only, as few will wait. While its next page is already there the writer
  is the slow part, and every page in flight will wait too: they count against the cap
  (at the mean size of the pages answered so far). The reader's next page is never
  held back by the cap, so a large page cannot stall the run.
- glibc gives every new thread a malloc arena (up to 8 per core) and keeps what is freed
  in it: with 16 workers that held 6-8 MB more than the pages did. The pool caps the
  arenas at MALLOC_ARENAS (threads allocate holding the GIL: more buy no concurrency).
- Requests are prepared and submitted only in the reading thread; workers only send.
- `close()` drops every page not read and sets the stop handed to each request it sent:
  a worker inside a retry sends no further try and sleeps out no backoff, so a run that
  fails or stops is not kept alive by retries nobody waits for. A reader still waiting
  for a page when another thread closes the pipeline gets `GTMCLICancelledError`.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tap_gtmcli.api.errors import GTMCLICancelledError
from tap_gtmcli.tap.result_pages import ResultPage

Request = TypeVar("Request")
#: glibc malloc arenas the process keeps once a pool of workers starts (see above).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for threads started from now on; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


@dataclass(eq=False)
class _Job:
    key: str
    expected_pages: int
    #: From the answers' `total_pages`, once one came back.
    last_page: int | None = None
    next_to_send: int = 1
    pages: dict[int, Future[ResultPage]] = field(default_factory=dict)
    #: Dropped by `close()`: a reader still waiting for its pages is told so.
    closed: bool = False

    @property
    def wanted(self) -> int:
        return self.last_page if self.last_page is not None else self.expected_pages

    @property
    def unsent(self) -> int:
        return max(0, self.wanted - self.next_to_send + 1)


class PagePipeline(Generic[Request]):
    """Pages of planned jobs, fetched ahead by a pool of workers, read job after job."""

    def __init__(
        self,
        *,
        prepare: Callable[[str, int], Request],
        send: Callable[[Request, threading.Event], ResultPage],
        window: Callable[[], int],
        workers: int,
        max_waiting_bytes: int,
    ) -> None:
        self._prepare = prepare
        self._send = send
        self._window = window
        self._workers = max(1, workers)
        self.max_waiting_bytes = max_waiting_bytes
        self._changed = threading.Condition()
        self._plan: list[_Job] = []
        self._by_key: dict[str, _Job] = {}
        self._reading = 0  # index in the plan of the job being read
        self._in_flight = 0
        self._waiting_bytes = 0
        self._sizes: dict[Future[ResultPage], int] = {}
        self._answered_pages = 0
        self._answered_bytes = 0
        self._pool: ThreadPoolExecutor | None = None
        #: Handed to every request sent, set by `close()`: each worker stops retrying.
        self._stop = threading.Event()
        self.requested = 0
        self.peak_in_flight = 0
        self.peak_waiting_bytes = 0

    def plan(self, jobs: Sequence[tuple[str, int | None]]) -> None:
        """Add jobs to read, in reading order, each with its expected page count."""
        with self._changed:
            for key, expected in jobs:
                if key not in self._by_key:
                    self._add(key, expected)

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        return self._in_flight

    @property
    def waiting_bytes(self) -> int:
        """Bytes of pages answered and not yet handed to the reader."""
        return self._waiting_bytes

    def pages(
        self, key: str, expected_pages: int | None = None
    ) -> Generator[ResultPage, None, None]:
        """The pages of job `key`, in order; jobs planned before it are dropped."""
        job = self._start_reading(key, expected_pages)
        number = 1
        try:
            while True:
                future = self._wait_for(job, number)
                if future is None:
                    return
                page = future.result()
                self._hand_over(job, number)
                # No `total_pages` means a single page, as the paginator reads it.
                last_page = page.total_pages if page.total_pages is not None else number
                job.last_page = last_page
                if number > last_page or not page.row_count:
                    return  # past the end, or an empty page: nothing further to read
                yield page
                number += 1
        finally:
            self._finish(job)

    def close(self) -> None:
        """Drop every page not read yet and stop the workers: one inside a retry sends
        no further try and sleeps out no backoff (nor a hold by the pacer).

        Returns at once, without waiting for a request on the wire to be answered.
        Jobs planned or read afterwards start afresh, with a stop of their own.
        """
        with self._changed:
            self._stop.set()
            self._stop = threading.Event()
            for job in self._plan[self._reading:]:
                self._drop(job)
                job.closed = True
            self._plan.clear()
            self._by_key.clear()
            self._reading = 0
            pool, self._pool = self._pool, None
            self._changed.notify_all()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # --- the reading thread -------------------------------------------------------

    def _start_reading(self, key: str, expected_pages: int | None) -> _Job:
        with self._changed:
            job = self._by_key.get(key)
            if job is None:
                # Not planned (or read already): read it now, before anything planned.
                job = self._add(key, expected_pages, at=self._reading)
            while self._plan[self._reading] is not job:
                skipped = self._plan[self._reading]  # planned but never asked for
                self._drop(skipped)
                self._by_key.pop(skipped.key, None)
                self._reading += 1
            return job

    def _wait_for(self, job: _Job, number: int) -> Future[ResultPage] | None:
        with self._changed:
            while True:
                if job.closed:
                    raise GTMCLICancelledError(
                        f"result pages of job {job.key} not read: the read-ahead was closed"
                    )
                answered = job.pages.get(number)
                self._send_more(job, number,
                                writer_is_slow=answered is not None and answered.done())
                future = job.pages.get(number)
                if future is None and number > job.wanted:
                    return None
                if future is not None and future.done():
                    return future
                self._changed.wait()

    def _hand_over(self, job: _Job, number: int) -> None:
        with self._changed:
            # Not kept past its turn: a job's pages would otherwise stay until its end.
            future = job.pages.pop(number)
            self._waiting_bytes -= self._sizes.pop(future, 0)

    def _finish(self, job: _Job) -> None:
        with self._changed:
            self._drop(job)
            if self._reading < len(self._plan) and self._plan[self._reading] is job:
                self._reading += 1
            self._by_key.pop(job.key, None)

    def _send_more(self, reading: _Job, number: int, *, writer_is_slow: bool) -> None:
        """Submit the next pages in plan order while the window and byte cap allow."""
        index = self._reading
        while index < len(self._plan):
            job = self._plan[index]
            if not job.unsent:
                index += 1
                continue
            page = job.next_to_send
            if not (job is reading and page == number) and self._over_byte_cap(writer_is_slow):
                break  # the writer is the slow part: a wider window would not help
            if self._in_flight >= self._window():
                break
            self._submit(job, page)
            job.next_to_send += 1

    def _over_byte_cap(self, writer_is_slow: bool) -> bool:
        held = self._waiting_bytes
        if writer_is_slow and self._answered_pages:
            # Pages in flight will wait for their turn too.
            held += self._in_flight * self._answered_bytes // self._answered_pages
        return held >= self.max_waiting_bytes

    def _submit(self, job: _Job, page: int) -> None:
        if self._pool is None:
            limit_malloc_arenas()
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="gtmcli-page")
        request = self._prepare(job.key, page)
        future = self._pool.submit(self._send, request, self._stop)
        self._in_flight += 1
        self.requested += 1
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        # Known as the job's page before its answer is taken in: an answer that came
        # already runs the callback here, and would otherwise not count as waiting.
        job.pages[page] = future
        future.add_done_callback(lambda done: self._answered(job, page, done))

    def _drop(self, job: _Job) -> None:
        pages, job.pages = job.pages, {}
        for future in pages.values():
            future.cancel()
            self._waiting_bytes -= self._sizes.pop(future, 0)
        job.next_to_send = job.wanted + 1

    def _add(self, key: str, expected_pages: int | None, at: int | None = None) -> _Job:
        job = self._by_key[key] = _Job(key, max(1, expected_pages or 1))
        self._plan.insert(len(self._plan) if at is None else at, job)
        return job

    # --- the workers ----------------------------------------------------------------

    def _answered(self, job: _Job, number: int, future: Future[ResultPage]) -> None:
        with self._changed:
            self._in_flight -= 1  # answered, failed, or cancelled before it was sent
            page = None if future.cancelled() or future.exception() else future.result()
            if page is not None and job.pages.get(number) is future:  # not dropped
                self._sizes[future] = page.byte_size
                self._answered_pages += 1
                self._answered_bytes += page.byte_size
                self._waiting_bytes += page.byte_size
                self.peak_waiting_bytes = max(self.peak_waiting_bytes, self._waiting_bytes)
                if page.total_pages is not None and page.total_pages > job.wanted:
                    # More pages than the job's total promised: they go out next.
                    job.last_page = page.total_pages
            self._changed.notify_all()
