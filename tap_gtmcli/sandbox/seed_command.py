"""`gtmcli-sandbox seed`: fill a running sandbox with jobs, from the command line.

It asks the running server's `POST /_sandbox/seed` route (tap_gtmcli/sandbox/README.md),
so the jobs look like jobs an account ran: their items generated, their results
deterministic, no credits charged. The job ids go to stdout, one a line, for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from tap_gtmcli.sandbox.config import API_KEY_ENV, DEFAULT_API_KEY, DEFAULT_PORT
from tap_gtmcli.sandbox.jobs import SEED_STATUSES
from tap_gtmcli.sandbox.outcomes import JOB_TYPES

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
TIMEOUT_SECONDS = 60.0


class SeedError(Exception):
    """The sandbox could not be reached, or refused the request; the message says why."""


def build_parser() -> argparse.ArgumentParser:
    """The `gtmcli-sandbox seed` command line."""
    parser = argparse.ArgumentParser(
        prog="gtmcli-sandbox seed",
        description="Create jobs in a running gtmcli-sandbox (free of charge) and print"
        " their ids, one a line.",
    )
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"the sandbox's base URL (default: {DEFAULT_URL})")
    parser.add_argument("--api-key", default=None,
                        help=f"the key the sandbox was started with (default: ${API_KEY_ENV}"
                        f" or {DEFAULT_API_KEY})")
    parser.add_argument("--type", dest="job_type", choices=JOB_TYPES, default="validate",
                        help="job type (default: validate)")
    parser.add_argument("--count", type=int, default=100,
                        help="items, and so result rows, per job (default: 100)")
    parser.add_argument("--jobs", type=int, default=1, help="how many jobs (default: 1)")
    parser.add_argument("--status", choices=SEED_STATUSES, default="completed",
                        help="completed (default), failed, or pending (then processed at"
                        " the sandbox's pace)")
    parser.add_argument("--seed", default="seed",
                        help="the same seed, type and count give the same items")
    return parser


def seed(url: str, api_key: str, body: dict[str, Any]) -> list[str]:
    """POST the seed request; the created job ids, or SeedError naming the cause."""
    if not url.startswith(("http://", "https://")):
        raise SeedError(f"--url must start with http:// or https:// (given: {url!r})")
    # The scheme is checked above, so urllib cannot be led to open a file: URL.
    request = urllib.request.Request(  # noqa: S310
        url.rstrip("/") + "/_sandbox/seed", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            return list(json.load(response)["job_ids"])
    except urllib.error.HTTPError as error:
        if error.code == 401:
            raise SeedError(f"the sandbox at {url} refused the key: pass the one it was started"
                            f" with (--api-key, or ${API_KEY_ENV})") from None
        raise SeedError(f"the sandbox at {url} answered {error.code}: "
                        f"{_message(error.read())}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SeedError(f"no sandbox answers at {url} ({reason}); start one with"
                        " `gtmcli-sandbox`, or pass its URL with --url") from None


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return "no error message"


def main(argv: Sequence[str] | None = None) -> int:
    """Seed, print the job ids; exit 1 with one line on stderr when it cannot."""
    arguments = build_parser().parse_args(argv)
    api_key = arguments.api_key or os.environ.get(API_KEY_ENV) or DEFAULT_API_KEY
    body = {"type": arguments.job_type, "count": arguments.count, "jobs": arguments.jobs,
            "status": arguments.status, "seed": arguments.seed}
    try:
        job_ids = seed(arguments.url, api_key, body)
    except SeedError as error:
        print(f"gtmcli-sandbox seed: {error}", file=sys.stderr)
        return 1
    for job_id in job_ids:
        print(job_id)
    print(f"seeded {len(job_ids)} {arguments.status} {arguments.job_type} jobs of"
          f" {arguments.count} items at {arguments.url}", file=sys.stderr)
    return 0
