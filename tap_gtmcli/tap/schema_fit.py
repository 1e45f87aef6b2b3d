"""Every record fits the SCHEMA the tap sent: a value of the wrong type is kept, not sent.

A server can answer `status: 7` or `email: ["a", "b"]`; a validating loader would then
fail on a record its own SCHEMA forbids. The value moves to `additional_fields` under
its field's name and the typed column is null, with one warning per field per run.
The same types, as msgspec types, let the fast path (record_lines) prove a page fits
without building its values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import msgspec

EXTRA_FIELDS = "additional_fields"

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def _type_names(schema: Mapping[str, Any]) -> list[str]:
    kinds = schema.get("type", [])
    return [kinds] if isinstance(kinds, str) else list(kinds)


def fits(value: Any, schema: Mapping[str, Any]) -> bool:
    """True when `value` has a type `schema` allows (nested objects and arrays too)."""
    names = _type_names(schema)
    if not names:
        return True
    if isinstance(value, bool):
        return "boolean" in names
    if not any(isinstance(value, _JSON_TYPES[name]) for name in names if name in _JSON_TYPES):
        return False
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        return all(fits(item, properties[key]) for key, item in value.items()
                   if key in properties and item is not None)
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return all(item is None or fits(item, schema["items"]) for item in value)
    return True


def msgspec_type(schema: Mapping[str, Any]) -> Any:
    """The msgspec type that decodes exactly the values `schema` allows."""
    options: list[Any] = []
    for name in _type_names(schema):
        if name == "object":
            properties = schema.get("properties")
            options.append(msgspec.defstruct(
                "Nested", [(key, msgspec_type(sub), None) for key, sub in properties.items()],
            ) if properties else dict)
        elif name == "array":
            items = schema.get("items")
            options.append(list[msgspec_type(items)] if isinstance(items, Mapping) else list)  # type: ignore[misc]
        elif name in ("string", "integer", "number", "boolean"):
            options.append({"string": str, "integer": int, "number": float,
                            "boolean": bool}[name])
        elif name == "null":
            options.append(None)
    if not options:
        return Any
    union = options[0]
    for option in options[1:]:
        union = union | option
    return union


class SchemaFit:
    """Moves values of the wrong type out of a stream's typed columns."""

    def __init__(self, stream: str, properties: Mapping[str, Any],
                 logger: logging.Logger) -> None:
        self._stream = stream
        self._properties = {key: value for key, value in properties.items()
                            if key != EXTRA_FIELDS}
        self._logger = logger
        self._reported: set[str] = set()

    def fit(self, record: dict[str, Any]) -> dict[str, Any]:
        """`record` with every misfit value moved to `additional_fields`."""
        misfits = [key for key, value in record.items()
                   if value is not None and key in self._properties
                   and not fits(value, self._properties[key])]
        if not misfits:
            return record
        extras = record.get(EXTRA_FIELDS) or {}
        for key in misfits:
            extras[key] = record[key]
            record[key] = None
            if key not in self._reported:
                self._reported.add(key)
                self._logger.warning(
                    "GTMCLI sent '%s.%s' with a type its schema does not allow; the value "
                    "is kept in '%s.%s' and the column left null (reported once per run)",
                    self._stream, key, EXTRA_FIELDS, key,
                )
        record[EXTRA_FIELDS] = extras
        return record
