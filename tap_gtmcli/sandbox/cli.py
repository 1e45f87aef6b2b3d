"""`gtmcli-sandbox`: run the sandbox in the foreground until SIGTERM or Ctrl-C.

`gtmcli-sandbox seed ...` is the one subcommand: it fills a running sandbox with jobs
(seed_command.py). Serving stays the bare command, so every script's flags still work.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from tap_gtmcli.sandbox.config import (
    API_KEY_ENV,
    CREATE_STATUSES,
    DEFAULT_API_KEY,
    DEFAULT_PORT,
    LOOPBACK_HOSTS,
    RETRY_AFTER_FORMATS,
    TIER_NAMES,
    SandboxConfig,
)
from tap_gtmcli.sandbox.quirks import QUIRKS
from tap_gtmcli.sandbox.ratelimit import RATE_ALGORITHMS, RATE_HEADERS
from tap_gtmcli.sandbox.seed_command import main as seed_main
from tap_gtmcli.sandbox.server import SandboxServer


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="gtmcli-sandbox",
        description="A local GTMCLI-compatible API server for tests and benchmarks.",
        epilog="`gtmcli-sandbox seed --help`: fill a running sandbox with jobs.",
    )
    parser.add_argument("--host", default="127.0.0.1", choices=LOOPBACK_HOSTS,
                        help="loopback only (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"0 picks a free port (default: {DEFAULT_PORT})")
    parser.add_argument("--api-key", default=None,
                        help=f"accepted Bearer key (default: ${API_KEY_ENV} or {DEFAULT_API_KEY})")
    parser.add_argument("--db", dest="db_path", default=None,
                        help="SQLite file that keeps jobs across restarts (default: in memory)")
    parser.add_argument("--credits", type=float, default=1_000_000.0)
    parser.add_argument("--start-delay", type=float, default=1.0,
                        help="seconds a job stays pending")
    parser.add_argument("--processing-rate", type=float, default=2000.0,
                        help="items per second; 0 completes at once")
    parser.add_argument("--fail-job-share", type=float, default=0.0)
    parser.add_argument("--inline-rows", type=int, default=5000,
                        help="jobs up to this many items are computed within the create"
                        " call; larger ones in the background (0: always)")
    parser.add_argument("--tier", choices=TIER_NAMES, default=None,
                        help="enable the rate limits of a plan tier (one-second windows)")
    parser.add_argument("--rate-limit", default=None, metavar="REQUESTS/WINDOW",
                        help="limit requests per fixed window of any length, e.g. 120/60s,"
                        " 120/min or 50/s (with --tier, the tier keeps its daily quota)")
    parser.add_argument("--no-job-endpoint-limits", dest="limit_job_endpoints",
                        action="store_false",
                        help="async job endpoints bypass the limit: no counting and no"
                        " X-RateLimit-* headers on /v1/jobs routes")
    parser.add_argument("--rate-algo", choices=RATE_ALGORITHMS, default="grid",
                        help="how the limit counts: calendar windows (grid), windows opened"
                        " by the first request with Reset rounded down (lazy) or up"
                        " (lazy-ceil), a sliding log, a token bucket")
    parser.add_argument("--rate-headers", choices=RATE_HEADERS, default="all",
                        help="all: X-RateLimit-* and Retry-After; retry-after: Retry-After on"
                        " 429s only; none: no rate-limit headers at all")
    parser.add_argument("--retry-after-format", choices=RETRY_AFTER_FORMATS, default="seconds")
    parser.add_argument("--list-page-size", type=int, default=0,
                        help="paginate GET /v1/jobs with this page size (0: unpaginated)")
    parser.add_argument("--error-share", type=float, default=0.0)
    parser.add_argument("--drop-share", type=float, default=0.0)
    parser.add_argument("--truncate-share", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--create-status", type=int, choices=CREATE_STATUSES, default=201)
    parser.add_argument("--webhook-timeout", type=float, default=10.0)
    parser.add_argument("--webhook-backoff", type=float, default=1.0)
    parser.add_argument("--quirk", dest="quirks", action="append", default=[],
                        choices=sorted(QUIRKS), metavar="NAME",
                        help="answer like an untrustworthy server (repeatable): "
                        + "; ".join(f"{name}: {text}" for name, text in sorted(QUIRKS.items())))
    parser.add_argument("--log-level", default="WARNING",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="DEBUG logs each request line (never headers or keys)")
    return parser


def config_from_arguments(arguments: argparse.Namespace) -> SandboxConfig:
    """A SandboxConfig from parsed flags (and the API key environment variable)."""
    settings = vars(arguments).copy()
    settings.pop("log_level")
    settings["api_key"] = settings["api_key"] or os.environ.get(API_KEY_ENV) or DEFAULT_API_KEY
    settings["quirks"] = tuple(settings["quirks"])
    return SandboxConfig(**settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then stop cleanly and return 0."""
    arguments_given = list(sys.argv[1:] if argv is None else argv)
    if arguments_given[:1] == ["seed"]:
        return seed_main(arguments_given[1:])
    parser = build_parser()
    arguments = parser.parse_args(arguments_given)
    logging.basicConfig(
        level=arguments.log_level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from_arguments(arguments)
    except ValueError as error:
        parser.error(str(error))
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server = SandboxServer(config).start()
    try:
        # Scripts and tests parse exactly this line to find the port.
        print(f"gtmcli-sandbox listening on {server.url}", flush=True)
        while not stop_requested.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
