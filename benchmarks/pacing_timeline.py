"""Where the time of one read-ahead cell goes: every request's ask, start and answer.

Starts `gtmcli-sandbox` as bench_read_ahead.py does for the cell (its `start_sandbox`:
`--rate-limit 50/1s`, `--rate-algo`, `--latency-ms`) and runs the tap in this process,
with the pacer's `acquire`, `_start` and `observe` wrapped to record, per request,
when it asked to go, when the pacer let it start (and by which rule), and when its
answer came. Prints the
span's parts: the job list's round trip, the pages from the first start to the last,
the last answer's round trip; per second of the run, how many requests started and how
long requests stood waiting for the pacer.

    .venv/bin/python benchmarks/pacing_timeline.py --algo grid --latency-ms 800 \
        [--jobs 400 --rows 500 | --jobs 30 --rows 10000]

Prints only (a diagnosis tool for issue 22's cells; RESULTS.md is bench_read_ahead's).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from bench_extract import API_KEY
from bench_read_ahead import start_sandbox

from tap_gtmcli.tap import pacer as pacer_module
from tap_gtmcli.tap.tap import TapGTMCLI

LIMIT = 50


@dataclass
class Request:
    asked: float
    started: float = math.nan
    rule: str = ""
    answered: float = math.nan
    status: int | None = None


@dataclass
class Trace:
    requests: dict[int, Request] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: (when, seconds to wait, why) for each time the pacer said "not yet".
    holds: list[tuple[float, float, str]] = field(default_factory=list)


def why_not_yet(pacer: pacer_module.Pacer, now: float) -> str:
    """Which of the pacer's rules is saying "not yet" (read from its state, in the
    order `Pacer._wait` asks them)."""
    if now < pacer._held_until:
        return "held after a 429"
    word = pacer._word
    if word is not None and now < word.until:
        return "others on the key (word until Reset)"
    length = pacer._log_seconds()
    return f"log full: {pacer.limit} per {length:.2f} s"


def traced(trace: Trace) -> None:
    """Wrap the pacer's methods to record every request's times."""
    original_acquire = pacer_module.Pacer.acquire
    original_start = pacer_module.Pacer._start
    original_observe = pacer_module.Pacer.observe
    original_wait = pacer_module.Pacer._wait
    asked_at = threading.local()

    def wait(self, now, waited_out=False):  # type: ignore[no-untyped-def]
        seconds, rule = original_wait(self, now, waited_out)
        if seconds > 0:
            trace.holds.append((time.monotonic(), seconds, why_not_yet(self, now)))
        return seconds, rule

    def acquire(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        asked_at.value = time.monotonic()
        return original_acquire(self, *args, **kwargs)

    def start(self, now, rule):  # type: ignore[no-untyped-def]
        ticket = original_start(self, now, rule)
        with trace.lock:
            trace.requests[ticket] = Request(asked=asked_at.value, started=time.monotonic(),
                                             rule=rule)
        return ticket

    def observe(self, ticket, response):  # type: ignore[no-untyped-def]
        with trace.lock:
            request = trace.requests.get(ticket)
            if request is not None:
                request.answered = time.monotonic()
                request.status = response.status_code if response is not None else None
        return original_observe(self, ticket, response)

    pacer_module.Pacer.acquire = acquire  # type: ignore[method-assign]
    pacer_module.Pacer._start = start  # type: ignore[method-assign]
    pacer_module.Pacer.observe = observe  # type: ignore[method-assign]
    pacer_module.Pacer._wait = wait  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="grid")
    parser.add_argument("--latency-ms", type=int, default=800)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--read-ahead-mb", type=float, default=None,
                        help="the tap's max_read_ahead_mb (default: its own default)")
    args = parser.parse_args()
    # The very sandbox bench_read_ahead.py starts for this cell.
    sandbox = start_sandbox(args.jobs, args.rows, args.latency_ms, f"{LIMIT}/1s", args.algo)
    trace = Trace()
    traced(trace)
    try:
        settings = {"api_key": API_KEY, "api_url": sandbox.url}
        if args.read_ahead_mb is not None:
            settings["max_read_ahead_mb"] = args.read_ahead_mb
        tap = TapGTMCLI(config=settings)
        with contextlib.redirect_stdout(io.StringIO()):
            tap.sync_all()
    finally:
        sandbox.stop()
    timeline = sorted(trace.requests.values(), key=lambda r: r.started)
    t0 = timeline[0].started
    latency = args.latency_ms / 1000
    first, last = timeline[0], max(timeline, key=lambda r: r.answered)
    pages = timeline[1:]
    span = last.answered - t0
    needed = len([r for r in timeline if r.status != 429])
    print(f"{args.algo}, {args.latency_ms:.0f} ms, {args.jobs} x {args.rows}: {len(timeline)} "
          f"requests ({Counter(r.status for r in timeline)}), span {span:.2f} s, share of "
          f"budget {needed / LIMIT / span:.0%}")
    print(f"  job list: started 0.00 s, answered {first.answered - t0:.2f} s")
    print(f"  pages: first started {pages[0].started - t0:.2f} s, last started "
          f"{pages[-1].started - t0:.2f} s ({len(pages)} in "
          f"{pages[-1].started - pages[0].started:.2f} s = "
          f"{(len(pages) - 1) / max(1e-9, pages[-1].started - pages[0].started):.1f}/s); "
          f"last answer {span:.2f} s")
    print(f"  rules: {dict(Counter(r.rule for r in timeline))}")
    # A request counts at the limiter about `latency` after it starts (the sandbox waits
    # out its latency first), so seconds are binned by start + latency.
    by_second: Counter[int] = Counter(int(r.started - t0 + latency) for r in timeline)
    waiting = Counter()
    for r in pages:
        waiting[int(r.started - t0)] += r.started - r.asked
    holds: dict[int, Counter[str]] = {}
    for at, _seconds, why in trace.holds:
        holds.setdefault(int(at - t0), Counter())[why] += 1
    print("  second: starts counted in it (by start + latency) | seconds requests waited "
          "for the pacer, by start second | the pacer's \"not yet\"s in it, by rule")
    for second in range(int(span) + 2):
        print(f"    {second:2d}: {by_second.get(second, 0):3d} | {waiting.get(second, 0):6.2f} | "
              f"{dict(holds.get(second, Counter()))}")

if __name__ == "__main__":
    main()
