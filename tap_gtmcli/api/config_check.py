"""Config errors name the setting and what is wrong with it, never the value.

The SDK's own validation message is jsonschema's, which quotes the value
(`['gtm_live_…'] is not of type 'string'`): a key given as a list, or pasted into
another setting, would be printed. `KeySafeConfig` validates with the SDK's validator
(defaults applied the same way) and words each error from the schema rule alone. It
also starts masking the values of the settings marked secret in every log line
(redaction.py) the moment the config is read, before anything can log them.

`api_url` gets a check of its own, at start-up rather than at the first request: it
must be `http(s)://host[:port]`, since the plugins add `/v1/...` to it themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from jsonschema import ValidationError
from singer_sdk.exceptions import ConfigValidationError
from singer_sdk.plugin_base import JSONSchemaValidator, PluginBase

from tap_gtmcli.api.redaction import redact_secrets_in_logs

_JSON_TYPES = (
    (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
    (list, "array"), (dict, "object"), (type(None), "null"),
)
_BOUNDS = {
    "minimum": "at least", "maximum": "at most",
    "exclusiveMinimum": "more than", "exclusiveMaximum": "less than",
}
_SIZES = {
    "minLength": ("at least", "characters long"), "maxLength": ("at most", "characters long"),
    "minItems": ("at least", "items"), "maxItems": ("at most", "items"),
}


def json_type(value: object) -> str:
    """The JSON type name of a value (what a message may say about it)."""
    for python_type, name in _JSON_TYPES:
        if isinstance(value, python_type):
            return name
    return "number" if hasattr(value, "as_integer_ratio") else type(value).__name__


def setting_name(path: Any) -> str:
    """`job_types[0]` for the path `['job_types', 0]`."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "config"


def describe(error: ValidationError) -> list[str]:
    """What one schema error says, without the value that broke the rule."""
    keyword, rule = error.validator, error.validator_value
    where = setting_name(error.absolute_path)
    if keyword == "required":
        given = error.instance if isinstance(error.instance, Mapping) else {}
        prefix = "" if where == "config" else f"{where}."
        return [f"{prefix}{name}: required setting is missing" for name in rule
                if name not in given]
    if keyword == "additionalProperties":
        extra = sorted(str(name) for name in error.instance if name not in error.schema.get(
            "properties", {}))
        return [f"{where}: unknown setting {', '.join(extra)}"]
    if keyword == "type":
        expected = " or ".join(rule) if isinstance(rule, list) else str(rule)
        what = f"must be {expected}, not {json_type(error.instance)}"
    elif keyword == "enum":
        what = f"must be one of {', '.join(str(option) for option in rule)}"
    elif keyword in _BOUNDS:
        what = f"must be {_BOUNDS[keyword]} {rule}"
    elif keyword in _SIZES:
        bound, unit = _SIZES[keyword]
        what = f"must be {bound} {rule} {unit}"
    elif keyword == "format":
        what = f"must be a valid {rule}"
    elif keyword == "pattern":
        what = f"must match the pattern {rule}"
    else:
        what = f"breaks the schema's `{keyword}` rule"
    return [f"{where}: {what}"]


def config_errors(schema: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Every error of `config` against `schema`, value-free; defaults are filled in."""
    validator = JSONSchemaValidator(schema)
    return [message for error in validator.iter_errors(config) for message in describe(error)]


API_URL_SETTING = "api_url"
_API_URL_FORM = "http(s)://host[:port], e.g. https://api.gtmcli.com"


def api_url_errors(config: Mapping[str, Any]) -> list[str]:
    """What is wrong with the `api_url` setting, if set, without quoting it (a key pasted
    into the wrong setting must not be printed)."""
    url = config.get(API_URL_SETTING)
    if not isinstance(url, str):
        return []  # unset (the default applies) or the wrong type (the schema says so)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return [f"{API_URL_SETTING}: the port must be a number from 1 to 65535"]
    problem = None
    if parts.scheme.lower() not in {"http", "https"}:
        problem = f"must start with http:// or https:// ({_API_URL_FORM})"
    elif not parts.hostname:
        problem = f"names no host ({_API_URL_FORM})"
    elif parts.username is not None or parts.password is not None:
        problem = "must not hold a user name or password (the key goes in api_key)"
    elif port == 0:
        problem = "the port must be a number from 1 to 65535"
    elif parts.path.rstrip("/").lower().endswith("/v1"):
        problem = f"must not end in /v1: each request adds /v1/... itself ({_API_URL_FORM})"
    elif parts.path.strip("/") or parts.query or parts.fragment:
        problem = f"must have no path, query or fragment ({_API_URL_FORM})"
    return [f"{API_URL_SETTING}: {problem}"] if problem else []


def secret_values(schema: dict[str, Any], config: Mapping[str, Any]) -> Iterator[str]:
    """Every string held by a setting the schema marks secret (a list's items too)."""
    for name, spec in (schema.get("properties") or {}).items():
        if isinstance(spec, dict) and (spec.get("secret") or spec.get("writeOnly")):
            yield from _strings(config.get(name))


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


class KeySafeConfig(PluginBase):
    """Mix in before the SDK plugin class: masks secrets, validates without echoing values."""

    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        schema = self.config_jsonschema
        self.append_builtin_config(schema)
        redact_secrets_in_logs(*secret_values(schema, self._config))
        errors = config_errors(schema, self._config) + api_url_errors(self._config)
        if errors and raise_errors:
            raise ConfigValidationError("Config validation failed", errors=errors, schema=schema)
        if errors:
            # `--discover` and `--about` go on without a valid config; say what is missing
            # rather than the SDK's bare summary.
            self.logger.warning("Config validation failed (going on without it): %s",
                                "; ".join(errors))
        return errors
