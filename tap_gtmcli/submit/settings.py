"""The settings of `mapper-gtmcli` and `target-gtmcli`: one documented list, read once.

`SUBMIT_SETTINGS` is the single source for `--about` of both plugins; `SubmitSettings`
is the typed view the collaborators are built from, checked at start so a bad setting
stops the run before any message is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from singer_sdk import typing as th
from singer_sdk.exceptions import ConfigValidationError

from tap_gtmcli.api.settings import API_KEY, API_URL, MAX_RETRIES, REQUEST_TIMEOUT

MAX_BATCH_SIZE = 100_000
MODES = ("submit", "enrich")
JOB_TYPES = ("validate", "find", "auto")

SUBMIT_SETTINGS = th.PropertiesList(
    API_KEY,
    API_URL,
    th.Property(
        "streams",
        th.ArrayType(th.StringType),
        default=["*"],
        title="Streams",
        description="Glob patterns of the upstream streams to act on; messages of other "
        "streams pass through untouched.",
    ),
    th.Property(
        "job_type",
        th.StringType,
        default="auto",
        allowed_values=list(JOB_TYPES),
        title="Job type",
        description="`validate` (emails), `find` (first name, last name, domain), or "
        "`auto`: validate when the record has an email, else find when it has all three "
        "finder fields.",
    ),
    th.Property(
        "email_field",
        th.StringType(min_length=1),
        default="email",
        title="Email field",
        description="Record field holding the email; a dotted path reaches nested fields.",
    ),
    th.Property(
        "first_name_field",
        th.StringType(min_length=1),
        default="first_name",
        title="First name field",
        description="Record field holding the first name (dotted path allowed).",
    ),
    th.Property(
        "last_name_field",
        th.StringType(min_length=1),
        default="last_name",
        title="Last name field",
        description="Record field holding the last name (dotted path allowed).",
    ),
    th.Property(
        "domain_field",
        th.StringType(min_length=1),
        default="domain",
        title="Domain field",
        description="Record field holding the company domain (dotted path allowed).",
    ),
    th.Property(
        "batch_size",
        th.IntegerType(minimum=1, maximum=MAX_BATCH_SIZE),
        default=MAX_BATCH_SIZE,
        title="Batch size",
        description="Distinct items per GTMCLI job (1 to 100,000); a job is submitted when "
        "a batch is full and when the input ends.",
    ),
    th.Property(
        "webhook_url",
        th.StringType,
        title="Webhook URL",
        description="Optional URL GTMCLI POSTs to when each job completes.",
    ),
    th.Property(
        "mode",
        th.StringType,
        default="submit",
        allowed_values=list(MODES),
        title="Mode",
        description="`submit`: pass every message through and submit jobs; `enrich`: "
        "also wait for each job and add its results to the records (mapper only).",
    ),
    th.Property(
        "poll_interval",
        th.NumberType(exclusive_minimum=0),
        default=5,
        title="Poll interval",
        description="Enrich mode: seconds before the first job status check; later "
        "checks back off from it.",
    ),
    th.Property(
        "max_wait",
        th.NumberType(exclusive_minimum=0),
        default=3600,
        title="Maximum wait",
        description="Enrich mode: seconds to wait for one job to complete before the "
        "run fails.",
    ),
    REQUEST_TIMEOUT,
    MAX_RETRIES,
)

LEDGER_PATH_SETTING = th.Property(
    "ledger_path",
    th.StringType,
    title="Ledger path",
    description="Target only: JSON-lines file the submission ledger is appended to "
    "(it always goes to the log).",
)


#: Each setting's default, read from its schema: the one place defaults are written.
DEFAULTS: dict[str, Any] = {
    name: schema["default"]
    for name, schema in SUBMIT_SETTINGS.to_dict()["properties"].items()
    if "default" in schema
}


def _setting_error(name: str, problem: str) -> ConfigValidationError:
    # Names the setting and what it must be, never the value: a key pasted into the
    # wrong setting must not reach the log.
    return ConfigValidationError("Config validation failed", errors=[f"{name}: {problem}"])


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _setting_error(name, f"must be one of {', '.join(allowed)}")
    return str(value)


def _field_path(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _setting_error(name, "the mapping must name a record field")
    return value


def _whole_number(name: str, value: Any, low: int, high: int | None = None) -> int:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f"from {low:,} to {high:,}" if high is not None else f"{low} or more"
        raise _setting_error(name, f"must be a whole number {bounds}")
    return value


def _seconds(name: str, value: Any) -> float:
    if not isinstance(value, int | float | Decimal) or isinstance(value, bool) or value <= 0:
        raise _setting_error(name, "must be a positive number of seconds")
    return float(value)


@dataclass(frozen=True)
class SubmitSettings:
    """The submitter's settings, validated and with defaults applied."""

    api_key: str
    api_url: str
    streams: tuple[str, ...]
    job_type: str
    email_field: str
    first_name_field: str
    last_name_field: str
    domain_field: str
    batch_size: int
    webhook_url: str | None
    mode: str
    poll_interval: float
    max_wait: float
    request_timeout: float
    max_retries: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SubmitSettings:
        """Read and check the plugin config; raise `ConfigValidationError` naming the setting.

        The JSON Schema already rejects most bad values; this also catches explicit nulls
        (they take the default) and whitespace-only field names, which the schema lets
        through.
        """

        def setting(name: str) -> Any:
            value = config.get(name)
            return DEFAULTS.get(name) if value is None else value

        api_key = config.get("api_key")
        if not isinstance(api_key, str) or not api_key.strip():
            raise _setting_error("api_key", "a GTMCLI API key is required")
        streams = setting("streams")
        return cls(
            api_key=api_key,
            api_url=setting("api_url"),
            streams=tuple([streams] if isinstance(streams, str) else streams),
            mode=_one_of("mode", setting("mode"), MODES),
            job_type=_one_of("job_type", setting("job_type"), JOB_TYPES),
            batch_size=_whole_number("batch_size", setting("batch_size"), 1, MAX_BATCH_SIZE),
            email_field=_field_path("email_field", setting("email_field")),
            first_name_field=_field_path("first_name_field", setting("first_name_field")),
            last_name_field=_field_path("last_name_field", setting("last_name_field")),
            domain_field=_field_path("domain_field", setting("domain_field")),
            webhook_url=config.get("webhook_url") or None,
            poll_interval=_seconds("poll_interval", setting("poll_interval")),
            max_wait=_seconds("max_wait", setting("max_wait")),
            request_timeout=_seconds("request_timeout", setting("request_timeout")),
            max_retries=_whole_number("max_retries", setting("max_retries"), 0),
        )
