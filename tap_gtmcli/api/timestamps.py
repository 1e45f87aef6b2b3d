"""GTMCLI's timestamps, read one way by every product.

The docs say ISO-8601 UTC with `Z`; servers in the wild also send an offset, a space
instead of `T`, nanoseconds, epoch seconds (as a number or a string) or RFC 2822. All of
those are read; anything else is None, and the caller decides (the tap still extracts
the job, with a warning: it never drops one for its timestamp).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

#: A fraction of a second: `fromisoformat` before Python 3.11 reads only 3 or 6 digits,
#: so every fraction is padded or cut (nanoseconds) to six.
_FRACTION = re.compile(r"\.(\d+)")
#: Epoch seconds between 2001 and 2286 (ten digits): a number outside that is no time of
#: a job, but an id or an epoch in milliseconds read wrongly.
_EPOCH_RANGE = (1e9, 1e10)


def parse_timestamp(value: object) -> datetime | None:
    """A timestamp in any common form as an aware UTC datetime; None when unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _from_epoch(float(value))
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return _from_epoch(float(text))
    except ValueError:
        pass
    moment = _from_iso(text)
    if moment is None:
        moment = _from_rfc2822(text)
    return moment


def _from_epoch(seconds: float) -> datetime | None:
    if not _EPOCH_RANGE[0] <= seconds < _EPOCH_RANGE[1]:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc)


def _from_iso(text: str) -> datetime | None:
    normalized = _FRACTION.sub(
        lambda match: "." + f"{match.group(1):0<6}"[:6],
        text.replace("Z", "+00:00").replace("z", "+00:00"),
    )
    try:
        moment = datetime.fromisoformat(normalized)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _from_rfc2822(text: str) -> datetime | None:
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def utc_now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(timezone.utc)


#: How far ahead of our clock a job's `created_at` may be and still move the bookmark.
CLOCK_SKEW = timedelta(minutes=5)


def utc_now_iso() -> str:
    """The current time as ISO-8601 UTC with `Z`, as GTMCLI writes it."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
