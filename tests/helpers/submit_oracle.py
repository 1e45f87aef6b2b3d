"""The truth oracle of the submit side: an independent model of README "Submit mode"
(which items a record makes, how they are batched into jobs), and the upstream input
the reliability tests feed (contacts with a STATE every so many records).
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass
from typing import Any


def oracle_item(record: Any, job_type: str = "auto") -> tuple | None:
    """README "Submit mode": an email makes a validate item, else first/last/domain a find
    item; values must be non-empty strings once stripped; items are lowercased."""
    if not isinstance(record, dict):
        return None

    def usable(name: str) -> str | None:
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip().lower()
        return None

    if job_type in ("auto", "validate"):
        email = usable("email")
        if email is not None:
            return ("validate", email)
        if job_type == "validate":
            return None
    names = [usable(name) for name in ("first_name", "last_name", "domain")]
    if all(name is not None for name in names):
        return ("find", *names)
    return None


@dataclass
class Truth:
    """What the mapper must do with an input."""

    jobs: list[tuple[str, tuple]]  # (type, distinct items in first-seen order) per job
    acted_on: int  # records of acted-on streams
    submittable: int  # of those, records that make an item
    rejected: int

    @property
    def items(self) -> Counter:
        return Counter(item for _, items in self.jobs for item in items)


def mapper_truth(
    messages: list[Any], batch_size: int, streams: tuple[str, ...] = ("*",)
) -> Truth:
    """The jobs the README's batching rule yields: one open batch per (stream, job type)
    of distinct items, submitted when it holds `batch_size` items and at the end."""
    open_batches: dict[tuple[str, str], dict[tuple, None]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    jobs: list[tuple[str, tuple]] = []
    acted = submittable = rejected = 0
    for seq, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("type") != "RECORD":
            continue
        stream = message.get("stream")
        if not isinstance(stream, str) or not any(
            fnmatch.fnmatchcase(stream, pattern) for pattern in streams
        ):
            continue
        acted += 1
        item = oracle_item(message.get("record"))
        if item is None:
            rejected += 1
            continue
        submittable += 1
        key = (stream, item[0])
        batch = open_batches.setdefault(key, {})
        first_seen.setdefault(key, seq)
        batch[item] = None
        if len(batch) >= batch_size:
            jobs.append((item[0], tuple(batch)))
            del open_batches[key]
            del first_seen[key]
    for key in sorted(open_batches, key=first_seen.__getitem__):
        jobs.append((key[1], tuple(open_batches[key])))
    return Truth(jobs=jobs, acted_on=acted, submittable=submittable, rejected=rejected)


def contacts_input(
    count: int, state_every: int, *, start: int = 0, schema: bool = True, stream: str = "contacts"
) -> list[dict]:
    """Upstream messages: records 1..count with distinct emails, a STATE every
    `state_every` records whose value carries the position (like a tap's bookmark)."""
    messages: list[dict] = []
    if schema:
        messages.append({
            "type": "SCHEMA", "stream": stream, "key_properties": ["id"],
            "schema": {"type": "object", "properties": {
                "id": {"type": "integer"}, "email": {"type": ["string", "null"]}}},
        })
    for position in range(start + 1, count + 1):
        messages.append({"type": "RECORD", "stream": stream,
                         "record": {"id": position, "email": f"person{position}@example{position % 7}.com"}})
        if position % state_every == 0 or position == count:
            messages.append(position_state(position))
    return messages


def position_state(position: int) -> dict:
    return {"type": "STATE", "value": {"bookmarks": {"contacts": {"position": position}}}}


def state_position(state_value: dict | None) -> int:
    if not state_value:
        return 0
    return int(state_value["bookmarks"]["contacts"]["position"])


def replay_after(messages: list[dict], state_value: dict | None) -> list[dict]:
    """What the upstream tap sends when resumed from a STATE: SCHEMA, then the rest."""
    position = state_position(state_value)
    schema = [m for m in messages if m["type"] == "SCHEMA"]
    rest = [m for m in messages if m["type"] != "SCHEMA" and _position_of(m) > position]
    return schema + rest


def _position_of(message: dict) -> int:
    if message["type"] == "RECORD":
        return int(message["record"]["id"])
    if message["type"] == "STATE":
        return state_position(message["value"])
    return 0
