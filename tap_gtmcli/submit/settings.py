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

from tap_gtmcli.api.client import DEFAULT_API_URL
from tap_gtmcli.api.settings import API_KEY, API_URL, MAX_RETRIES, REQUEST_TIMEOUT

MAX_BATCH_SIZE = 100_000
MODES = ("submit", "enrich")
JOB_TYPES = ("validate", "find", "auto")
DEFAULT_RESUBMIT_AFTER_DAYS = 30
FIELD_SETTINGS = ("email_field", "first_name_field", "last_name_field", "domain_field")

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
    th.Property(
        "resubmit_after_days",
        th.IntegerType(minimum=0),
        default=DEFAULT_RESUBMIT_AFTER_DAYS,
        title="Resubmit after days",
        description="Items (normalised email, or first name, last name and domain) "
        "submitted by this account within this many days are not sent again: their "
        "records pass through, and in enrich mode get the stored result. 0 sends every "
        "item every run.",
    ),
    th.Property(
        "submission_index",
        th.StringType,
        title="Submission index",
        description="Where the index of submitted items lives: a SQLite file path, or a "
        "`postgresql://` URL to share one index between workers. Default: "
        "`.meltano/run/gtmcli/submission_index.sqlite` in the Meltano project, else "
        "`gtmcli/submission_index.sqlite` in the user's data directory.",
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


def _setting_error(message: str) -> ConfigValidationError:
    return ConfigValidationError("Config validation failed", errors=[message])


@dataclass(frozen=True)
class SubmitSettings:
    """The submitter's settings, validated and with defaults applied."""

    api_key: str
    api_url: str = DEFAULT_API_URL
    streams: tuple[str, ...] = ("*",)
    job_type: str = "auto"
    email_field: str = "email"
    first_name_field: str = "first_name"
    last_name_field: str = "last_name"
    domain_field: str = "domain"
    batch_size: int = MAX_BATCH_SIZE
    webhook_url: str | None = None
    mode: str = "submit"
    poll_interval: float = 5.0
    max_wait: float = 3600.0
    request_timeout: float = 60.0
    max_retries: int = 5
    resubmit_after_days: int = DEFAULT_RESUBMIT_AFTER_DAYS
    submission_index: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SubmitSettings:
        """Read and check the plugin config; raise `ConfigValidationError` naming the setting.

        The JSON Schema already rejects most bad values; this also catches explicit nulls
        and whitespace-only field names, which the schema lets through.
        """

        def pick(name: str, default: Any) -> Any:
            value = config.get(name)
            return default if value is None else value

        api_key = config.get("api_key")
        if not isinstance(api_key, str) or not api_key.strip():
            raise _setting_error("api_key: a GTMCLI API key is required")
        mode = pick("mode", "submit")
        if mode not in MODES:
            raise _setting_error(f"mode: {mode!r} is not one of {', '.join(MODES)}")
        job_type = pick("job_type", "auto")
        if job_type not in JOB_TYPES:
            raise _setting_error(f"job_type: {job_type!r} is not one of {', '.join(JOB_TYPES)}")
        batch_size = pick("batch_size", MAX_BATCH_SIZE)
        if not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise _setting_error(
                f"batch_size: {batch_size!r} is outside 1 to {MAX_BATCH_SIZE:,}"
            )
        fields: dict[str, str] = {}
        for name in FIELD_SETTINGS:
            value = pick(name, name.removesuffix("_field"))
            if not isinstance(value, str) or not value.strip():
                raise _setting_error(f"{name}: the mapping must name a record field")
            fields[name] = value
        streams = pick("streams", ["*"])
        if isinstance(streams, str):
            streams = [streams]
        numbers: dict[str, float] = {}
        for name, default in (
            ("poll_interval", 5.0),
            ("max_wait", 3600.0),
            ("request_timeout", 60.0),
        ):
            value = pick(name, default)
            if not isinstance(value, int | float | Decimal) or value <= 0:
                raise _setting_error(f"{name}: {value!r} must be a positive number of seconds")
            numbers[name] = float(value)
        max_retries = pick("max_retries", 5)
        if not isinstance(max_retries, int) or max_retries < 0:
            raise _setting_error(f"max_retries: {max_retries!r} must be 0 or more")
        resubmit_after_days = pick("resubmit_after_days", DEFAULT_RESUBMIT_AFTER_DAYS)
        if not isinstance(resubmit_after_days, int) or resubmit_after_days < 0:
            raise _setting_error(
                f"resubmit_after_days: {resubmit_after_days!r} must be 0 or more days"
            )
        submission_index = config.get("submission_index")
        if submission_index is not None and (
            not isinstance(submission_index, str) or not submission_index.strip()
        ):
            raise _setting_error("submission_index: must name a file or a postgresql:// URL")
        return cls(
            api_key=api_key,
            resubmit_after_days=resubmit_after_days,
            submission_index=submission_index,
            api_url=pick("api_url", DEFAULT_API_URL),
            streams=tuple(streams),
            job_type=job_type,
            batch_size=batch_size,
            webhook_url=config.get("webhook_url") or None,
            mode=mode,
            max_retries=max_retries,
            email_field=fields["email_field"],
            first_name_field=fields["first_name_field"],
            last_name_field=fields["last_name_field"],
            domain_field=fields["domain_field"],
            poll_interval=numbers["poll_interval"],
            max_wait=numbers["max_wait"],
            request_timeout=numbers["request_timeout"],
        )
