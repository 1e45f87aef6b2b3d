"""From an upstream record to a GTMCLI job item, or the reason it cannot be one.

Items are normalized (stripped, lowercased) so that identical contacts dedupe within a
batch and hash the same in the ledger. Only shape is checked here: a syntactically odd
email is still an item, because judging it is the API's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec

from tap_gtmcli.submit.settings import SubmitSettings

#: The dedupe key of an item: the normalized email, or (first, last, domain).
ItemKey = str | tuple[str, str, str]

_MISSING = object()


class Item(NamedTuple):
    """One job item: its job type and dedupe key (the payload is built from the key)."""

    job_type: str
    key: ItemKey


def item_payload(key: ItemKey) -> dict[str, str]:
    """The API payload of an item: `{"email": ...}` or the three finder fields."""
    if isinstance(key, str):
        return {"email": key}
    first, last, domain = key
    return {"first_name": first, "last_name": last, "domain": domain}


@dataclass(frozen=True)
class FieldPath:
    """A record field named by a setting, e.g. `email_field` = `contact.email`."""

    setting: str
    name: str

    def read(self, record: dict[str, Any]) -> tuple[str | None, str | None]:
        """(the stripped value, None) or (None, the reason it is unusable)."""
        value = record.get(self.name, _MISSING)
        if value is _MISSING and "." in self.name:
            value = record
            for part in self.name.split("."):
                if not isinstance(value, dict):
                    value = _MISSING
                    break
                value = value.get(part, _MISSING)
        where = f"{self.setting} '{self.name}'"
        if value is _MISSING:
            return None, f"{where} is missing"
        if value is None:
            return None, f"{where} is null"
        if not isinstance(value, str):
            return None, f"{where} is not a string ({type(value).__name__})"
        stripped = value.strip()
        if not stripped:
            return None, f"{where} is empty"
        return stripped, None


class ItemExtractor:
    """Turns records into items according to `job_type` and the field mapping."""

    def __init__(self, *, settings: SubmitSettings) -> None:
        self.job_type = settings.job_type
        self.email = FieldPath("email_field", settings.email_field)
        self.finder_fields = (
            FieldPath("first_name_field", settings.first_name_field),
            FieldPath("last_name_field", settings.last_name_field),
            FieldPath("domain_field", settings.domain_field),
        )
        # The top-level keys the field paths can read: the name itself (a literal key
        # wins over a dotted path) and the first part of a dotted path.
        keys: list[str] = []
        for field in (self.email, *self.finder_fields):
            for key in (field.name, field.name.split(".")[0]):
                if key not in keys:
                    keys.append(key)
        self._keys = tuple(keys)
        #: A msgspec Struct of only those keys: decoding a record into it skips the rest.
        self.fields_type: type = msgspec.defstruct(
            "RecordFields",
            [(f"f{index}", Any, _MISSING) for index in range(len(keys))],
            rename={f"f{index}": key for index, key in enumerate(keys)},
        )
        self._values = attrgetter(*(f"f{index}" for index in range(len(keys))))
        plain_email = self.job_type != "find" and "." not in self.email.name
        self._email_value = (
            attrgetter(f"f{keys.index(self.email.name)}") if plain_email else None
        )

    def email_key(self, fields: Any) -> str | None:
        """The validate item key of a record decoded into `fields_type`, when it is plain.

        None means "ask `extract_fields`": no usable top-level email, or not validating.
        """
        if self._email_value is None:
            return None
        value = self._email_value(fields)
        if type(value) is str:
            stripped = value.strip()
            if stripped:
                return stripped.lower()
        return None

    def extract_fields(self, fields: Any) -> Item | str:
        """`extract` for a record decoded into `fields_type`."""
        values = self._values(fields)
        if len(self._keys) == 1:
            values = (values,)
        record = {
            key: value
            for key, value in zip(self._keys, values, strict=True)
            if value is not _MISSING
        }
        return self.extract(record)

    def extract(self, record: Any) -> Item | str:
        """The record's item, or a reason naming the field that prevents one."""
        if not isinstance(record, dict):
            return f"record is not a JSON object ({type(record).__name__})"
        if self.job_type == "find":
            return self._finder_item(record)
        email, email_problem = self.email.read(record)
        if email is not None:
            return Item("validate", email.lower())
        if self.job_type == "validate":
            return email_problem or "no email"
        found = self._finder_item(record)
        if isinstance(found, str):
            return f"{email_problem} and {found}"
        return found

    def _finder_item(self, record: dict[str, Any]) -> Item | str:
        values: list[str] = []
        for field in self.finder_fields:
            value, problem = field.read(record)
            if value is None:
                return problem or "no value"
            values.append(value.lower())
        first, last, domain = values
        return Item("find", (first, last, domain))
