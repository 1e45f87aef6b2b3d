"""Settings of one sandbox server, fixed when it starts."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tap_gtmcli.sandbox.ratelimit import (
    RATE_ALGORITHMS,
    RATE_HEADERS,
    TIERS,
    RateRule,
    parse_rate_limit,
)

DEFAULT_API_KEY = "sandbox-key"
#: Where `gtmcli-sandbox` and `gtmcli-sandbox seed` read the key when no --api-key is given.
API_KEY_ENV = "GTMCLI_SANDBOX_API_KEY"
DEFAULT_PORT = 8765
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
CREATE_STATUSES = (200, 201, 202)
RETRY_AFTER_FORMATS = ("seconds", "http-date", "none")
TIER_NAMES = ("free", "starter", "growth", "scale")


@dataclass
class SandboxConfig:
    """Everything a sandbox needs to know; the defaults model a fast, fault-free GTMCLI."""

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str = DEFAULT_API_KEY
    # None keeps jobs in memory; a path keeps them in a SQLite file that outlives the process.
    db_path: str | None = None
    credits: float = 1_000_000.0
    start_delay: float = 1.0
    # Items per second; 0 or inf completes a job the moment its start delay ends.
    processing_rate: float = 2000.0
    fail_job_share: float = 0.0
    # Jobs up to this many items are computed inside the create call (a few ms); larger
    # ones by the background processor after the create answers. 0: always background.
    inline_rows: int = 5000
    create_status: int = 201
    # 0 serves the documented unpaginated list; above 0 the list is paginated.
    list_page_size: int = 0
    tier: str | None = None
    # REQUESTS/WINDOW such as "120/60s" (see ratelimit.parse_rate_limit): limits in windows
    # of that length; with a tier too, the tier keeps only its daily quota.
    rate_limit: str | None = None
    # False models GTMCLI's "async jobs bypass rate limits": the /v1/jobs routes are then
    # neither counted nor given X-RateLimit-* headers.
    limit_job_endpoints: bool = True
    # How the limit counts (see ratelimit.py) and which headers tell of it.
    rate_algo: str = "grid"
    rate_headers: str = "all"
    retry_after_format: str = "seconds"
    error_share: float = 0.0
    drop_share: float = 0.0
    truncate_share: float = 0.0
    latency_ms: float = 0.0
    fault_seed: int = 0
    webhook_timeout: float = 10.0
    webhook_backoff: float = 1.0
    webhook_retries: int = 3
    # Untrustworthy answers (see quirks.QUIRKS), e.g. ("results-total-pages-one",).
    quirks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.host not in LOOPBACK_HOSTS:
            # The sandbox accepts any payload and holds fake keys: never expose it beyond loopback.
            raise ValueError(f"host must be one of {LOOPBACK_HOSTS}, not {self.host!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if not self.api_key:
            raise ValueError("api_key must not be empty")
        if self.create_status not in CREATE_STATUSES:
            raise ValueError(f"create_status must be one of {CREATE_STATUSES}")
        if self.retry_after_format not in RETRY_AFTER_FORMATS:
            raise ValueError(f"retry_after_format must be one of {RETRY_AFTER_FORMATS}")
        if self.rate_algo not in RATE_ALGORITHMS:
            raise ValueError(f"rate_algo must be one of {RATE_ALGORITHMS}, not {self.rate_algo!r}")
        if self.rate_headers not in RATE_HEADERS:
            raise ValueError(
                f"rate_headers must be one of {RATE_HEADERS}, not {self.rate_headers!r}")
        if self.tier is not None and self.tier not in TIER_NAMES:
            raise ValueError(f"tier must be one of {TIER_NAMES} or None")
        if self.rate_limit is not None:
            parse_rate_limit(self.rate_limit)  # raises ValueError naming the bad text
        for name in ("fail_job_share", "error_share", "drop_share", "truncate_share"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {share}")
        if self.error_share + self.drop_share + self.truncate_share > 1.0:
            raise ValueError("error_share + drop_share + truncate_share must not exceed 1")
        if self.start_delay < 0 or self.processing_rate < 0 or math.isnan(self.processing_rate):
            raise ValueError("start_delay and processing_rate must be 0 or more")
        if self.inline_rows < 0:
            raise ValueError("inline_rows must be 0 or more")
        if self.list_page_size < 0 or self.list_page_size > 1000:
            raise ValueError("list_page_size must be between 0 and 1000")
        if self.credits < 0 or self.latency_ms < 0:
            raise ValueError("credits and latency_ms must be 0 or more")
        if self.webhook_timeout <= 0 or self.webhook_backoff < 0 or self.webhook_retries < 0:
            raise ValueError("webhook_timeout must be positive, backoff and retries 0 or more")

    @property
    def rate_rule(self) -> RateRule | None:
        """The limit this sandbox enforces, if any."""
        if self.rate_limit is None:
            return TIERS[self.tier].rule if self.tier else None
        rule = parse_rate_limit(self.rate_limit)
        if self.tier is None:
            return rule
        tier = TIERS[self.tier]
        return RateRule(rule.requests, rule.window_seconds, tier.per_day, tier.name)

    @property
    def bind_host(self) -> str:
        """The address actually bound: always the IPv4 loopback."""
        return "127.0.0.1"
