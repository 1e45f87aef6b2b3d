"""Config errors name the setting and what is wrong with it, never the value.

The SDK's own validation message is jsonschema's, which quotes the value
(`['gtm_live_…'] is not of type 'string'`): a key given as a list, or pasted into
another setting, would be printed. `KeySafeConfig` validates with the SDK's validator
(defaults applied the same way) and words each error from the schema rule alone. It
also starts masking the values of the settings marked secret in every log line
(redaction.py) the moment the config is read, before anything can log them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

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
        errors = config_errors(schema, self._config)
        if errors and raise_errors:
            raise ConfigValidationError("Config validation failed", errors=errors, schema=schema)
        if errors:
            self.logger.warning("Config validation failed")
        return errors
