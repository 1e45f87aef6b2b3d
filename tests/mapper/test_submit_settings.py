"""`SubmitSettings.from_config`: defaults from the schema, checks that name the setting."""

from __future__ import annotations

from typing import Any

import pytest
from singer_sdk.exceptions import ConfigValidationError

from tap_gtmcli.api.client import DEFAULT_API_URL
from tap_gtmcli.submit.settings import SubmitSettings

KEY = "gtm_live_settings_test_key"


def test_missing_and_null_settings_take_the_documented_defaults() -> None:
    nulls = dict.fromkeys(
        ("api_url", "streams", "job_type", "email_field", "batch_size", "mode"), None
    ) | dict.fromkeys(("poll_interval", "max_wait", "request_timeout", "max_retries"), None)

    for config in ({"api_key": KEY}, {"api_key": KEY, **nulls}):
        assert SubmitSettings.from_config(config) == SubmitSettings(
            api_key=KEY,
            api_url=DEFAULT_API_URL,
            streams=("*",),
            job_type="auto",
            email_field="email",
            first_name_field="first_name",
            last_name_field="last_name",
            domain_field="domain",
            batch_size=100_000,
            webhook_url=None,
            mode="submit",
            poll_interval=5.0,
            max_wait=3600.0,
            request_timeout=60.0,
            max_retries=5,
        )


def test_given_settings_are_kept() -> None:
    settings = SubmitSettings.from_config(
        {
            "api_key": KEY,
            "streams": "contacts",
            "batch_size": 7,
            "max_retries": 0,
            "poll_interval": 0.5,
            "mode": "enrich",
            "domain_field": "company.domain",
        }
    )
    assert (settings.streams, settings.batch_size, settings.max_retries) == (("contacts",), 7, 0)
    assert (settings.poll_interval, settings.mode, settings.domain_field) == (
        0.5,
        "enrich",
        "company.domain",
    )


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("api_key", "  ", "a GTMCLI API key is required"),
        ("mode", KEY, "must be one of submit, enrich"),
        ("job_type", KEY, "must be one of validate, find, auto"),
        ("email_field", "   ", "the mapping must name a record field"),
        ("last_name_field", 3, "the mapping must name a record field"),
        ("batch_size", 0, "must be a whole number from 1 to 100,000"),
        ("batch_size", KEY, "must be a whole number from 1 to 100,000"),
        ("max_retries", -1, "must be a whole number 0 or more"),
        ("max_wait", 0, "must be a positive number of seconds"),
        ("request_timeout", KEY, "must be a positive number of seconds"),
    ],
)
def test_a_bad_setting_is_named_and_its_value_never_echoed(
    name: str, value: Any, problem: str
) -> None:
    with pytest.raises(ConfigValidationError) as raised:
        SubmitSettings.from_config({"api_key": KEY, name: value})
    assert raised.value.errors == [f"{name}: {problem}"]
    assert KEY not in str(raised.value.errors)
