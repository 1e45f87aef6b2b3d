"""GTMCLI's timestamps (ISO-8601 UTC with `Z`), read one way by every product."""

from __future__ import annotations

from datetime import datetime, timezone


def parse_timestamp(value: object) -> datetime | None:
    """An ISO-8601 timestamp as an aware UTC datetime; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def utc_now_iso() -> str:
    """The current time as ISO-8601 UTC with `Z`, as GTMCLI writes it."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
