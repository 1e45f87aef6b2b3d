"""The settings every GTMCLI plugin shares (how to reach the API), documented once."""

from __future__ import annotations

from singer_sdk import typing as th

from tap_gtmcli.api.client import DEFAULT_API_URL

API_KEY = th.Property(
    "api_key",
    th.StringType,
    required=True,
    secret=True,
    title="API key",
    description="GTMCLI API key (`gtm_live_…`), sent as a Bearer token; never logged.",
)
API_URL = th.Property(
    "api_url",
    th.StringType,
    default=DEFAULT_API_URL,
    title="API URL",
    description="Base URL of the GTMCLI API; point it at gtmcli-sandbox to run "
    "without an account.",
)
REQUEST_TIMEOUT = th.Property(
    "request_timeout",
    th.IntegerType(minimum=1),
    default=60,
    title="Request timeout",
    description="Seconds to wait for each GTMCLI answer before the request counts as "
    "failed (and is retried).",
)
MAX_RETRIES = th.Property(
    "max_retries",
    th.IntegerType(minimum=0),
    default=5,
    title="Max retries",
    description="Retries of a transient failure (429, 5xx, timeout, dropped connection, "
    "malformed body) before the run fails; Retry-After is honoured exactly. In the "
    "mapper and target it also bounds resubmissions after an ambiguous job create.",
)
MAX_RATE_LIMIT_WAIT = th.Property(
    "max_rate_limit_wait",
    th.NumberType(minimum=0),
    default=300,
    title="Max rate-limit wait",
    description="Seconds one request may spend waiting out 429s that say how long to wait "
    "(Retry-After, or X-RateLimit-Reset) before the run fails; these waits do not count "
    "against max_retries. A 429 that names no wait counts as a retry.",
)
