"""Deterministic answers to validation and finder items, and what they cost.

Every decision comes from a blake2b digest of the normalised input, so the same item
always gets the same row, in any process, on any machine (Python's hash() is salted).
"""

from __future__ import annotations

import hashlib
import re
import struct
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Literal

import msgspec

JobType = Literal["validate", "find"]
JOB_TYPES: tuple[JobType, ...] = ("validate", "find")
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "validate": ("email",),
    "find": ("first_name", "last_name", "domain"),
}

VALID_EMAIL_COST = 0.25
FOUND_EMAIL_COST = 1.0
# The most one row of each job type can cost: a job's worst case, reserved at creation.
UNIT_PRICES: dict[str, float] = {"validate": VALID_EMAIL_COST, "find": FOUND_EMAIL_COST}

DISPOSABLE_DOMAINS = frozenset({
    "mailinator.com", "guerrillamail.com", "10minutemail.com", "tempmail.com",
    "temp-mail.org", "yopmail.com", "trashmail.com", "sharklasers.com",
    "getnada.com", "dispostable.com", "maildrop.cc", "throwawaymail.com",
})
ROLE_LOCAL_PARTS = frozenset({
    "info", "admin", "support", "sales", "noreply", "no-reply", "contact", "hello",
    "help", "billing", "office", "marketing", "jobs", "careers", "team", "webmaster",
    "postmaster", "abuse", "hr", "press", "security", "privacy",
})
# Known catch-all domains; other company domains are catch-all by hash (CATCHALL_SHARE).
CATCHALL_DOMAINS = frozenset({
    "catchall.io", "acceptall.com", "anymail.dev", "bigcorp-catchall.com",
})
CATCHALL_SHARE = 0.12
FREE_MAIL_PROVIDERS: dict[str, str] = {
    "gmail.com": "google", "googlemail.com": "google",
    "outlook.com": "microsoft", "hotmail.com": "microsoft", "live.com": "microsoft",
    "msn.com": "microsoft",
    "icloud.com": "icloud", "me.com": "icloud", "mac.com": "icloud",
    "yahoo.com": "yahoo", "ymail.com": "yahoo",
    "proton.me": "proton", "protonmail.com": "proton",
}
# RFC 2606/6761 names that can never receive mail: always invalid with no MX.
RESERVED_TLDS = frozenset({"invalid", "test", "example", "localhost", "local"})

_EMAIL_SYNTAX = re.compile(
    r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)
_NON_LETTERS = re.compile(r"[^a-z]")
MAX_EMAIL_LENGTH = 254

# (convention, cumulative share) chosen per domain; first.last dominates as in the wild.
CONVENTIONS: tuple[tuple[str, float], ...] = (
    ("first.last", 0.40), ("flast", 0.60), ("first", 0.72), ("firstlast", 0.82),
    ("first_last", 0.88), ("f.last", 0.94), ("lastf", 0.97), ("last.first", 1.0),
)


def stable_fraction(*parts: str) -> float:
    """A number in [0, 1) fixed by the parts, identical across processes."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@lru_cache(maxsize=65536)
def domain_info(domain: str) -> dict[str, Any]:
    """What a DNS lookup would say about a (lowercase) domain."""
    provider = domain_provider(domain)
    reserved = domain.rsplit(".", 1)[-1] in RESERVED_TLDS
    return {
        "domain": domain,
        "provider": provider,
        "mx_records": _mx_records(domain, provider),
        "is_catchall": is_catchall_domain(domain),
        "spf": not reserved and (provider != "other" or stable_fraction("spf", domain) < 0.85),
    }


@lru_cache(maxsize=65536)
def domain_provider(domain: str) -> str:
    """The mailbox provider of a domain: known free-mail hosts, else a stable guess."""
    if domain in FREE_MAIL_PROVIDERS:
        return FREE_MAIL_PROVIDERS[domain]
    if domain in DISPOSABLE_DOMAINS or domain.rsplit(".", 1)[-1] in RESERVED_TLDS:
        return "other"
    share = stable_fraction("provider", domain)
    if share < 0.40:
        return "google"
    if share < 0.70:
        return "microsoft"
    return "other"


@lru_cache(maxsize=65536)
def is_catchall_domain(domain: str) -> bool:
    """Whether the domain's mail server accepts every local part."""
    if domain in CATCHALL_DOMAINS:
        return True
    if domain in FREE_MAIL_PROVIDERS or domain in DISPOSABLE_DOMAINS:
        return False
    return stable_fraction("catchall", domain) < CATCHALL_SHARE


def _mx_records(domain: str, provider: str) -> list[str]:
    if domain.rsplit(".", 1)[-1] in RESERVED_TLDS:
        return []
    if provider == "google":
        return ["aspmx.l.google.com", "alt1.aspmx.l.google.com", "alt2.aspmx.l.google.com"]
    if provider == "microsoft":
        return [f"{domain.replace('.', '-')}.mail.protection.outlook.com"]
    if provider == "icloud":
        return ["mx01.mail.icloud.com", "mx02.mail.icloud.com"]
    if provider == "yahoo":
        return ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"]
    if provider == "proton":
        return ["mail.protonmail.ch", "mailsec.protonmail.ch"]
    return [f"mx1.{domain}", f"mx2.{domain}"]


def validate_email(email: str) -> dict[str, Any]:
    """The validation row for one submitted email (echoed as submitted)."""
    normalized = email.strip().lower()
    if len(normalized) > MAX_EMAIL_LENGTH or not _EMAIL_SYNTAX.match(normalized):
        return _validation_row(email, "invalid", "syntax", "other", None)
    local, domain = normalized.rsplit("@", 1)
    info = domain_info(domain)
    provider = info["provider"]
    if domain.rsplit(".", 1)[-1] in RESERVED_TLDS:
        return _validation_row(email, "invalid", "no_mx", provider, info)
    if domain in DISPOSABLE_DOMAINS:
        return _validation_row(email, "disposable", "disposable", provider, info)
    if local.split("+", 1)[0] in ROLE_LOCAL_PARTS:
        return _validation_row(email, "risky", "role_account", provider, info)
    share = stable_fraction("validate", normalized)
    if info["is_catchall"]:
        status = "valid_catchall" if share < 0.40 else "catchall"
        return _validation_row(email, status, "catchall", provider, info)
    if share < 0.70:
        return _validation_row(email, "valid", None, provider, info)
    if share < 0.90:
        return _validation_row(email, "invalid", "mailbox_not_found", provider, info)
    return _validation_row(email, "unknown", "greylisted", provider, info)


def _validation_row(
    email: str, status: str, sub_status: str | None, provider: str,
    info: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "email": email,
        "status": status,
        "sub_status": sub_status,
        "provider": provider,
        "domain_info": info,
    }


@lru_cache(maxsize=65536)
def normalize_name(name: str) -> str:
    """Lowercase ASCII letters only: 'José-María' -> 'josemaria'."""
    if name.isascii():
        return _NON_LETTERS.sub("", name.lower())
    decomposed = unicodedata.normalize("NFKD", name)
    stripped = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _NON_LETTERS.sub("", stripped.lower())


@lru_cache(maxsize=65536)
def normalize_domain(domain: str) -> str:
    """A bare lowercase host: no scheme, path, 'www.' or '@'."""
    host = domain.strip().lower()
    for prefix in ("https://", "http://", "@"):
        host = host.removeprefix(prefix)
    host = host.split("/", 1)[0].rstrip(".")
    return host.removeprefix("www.")


@lru_cache(maxsize=65536)
def domain_convention(domain: str) -> str:
    """The address convention a company uses, fixed per domain."""
    share = stable_fraction("convention", domain)
    return next(name for name, upper in CONVENTIONS if share < upper)


def compose_address(convention: str, first: str, last: str, domain: str) -> str:
    """The address a convention gives for a person."""
    if convention == "first.last":
        local = f"{first}.{last}"
    elif convention == "flast":
        local = f"{first[:1]}{last}"
    elif convention == "first":
        local = first
    elif convention == "firstlast":
        local = f"{first}{last}"
    elif convention == "first_last":
        local = f"{first}_{last}"
    elif convention == "f.last":
        local = f"{first[:1]}.{last}"
    elif convention == "lastf":
        local = f"{last}{first[:1]}"
    else:
        local = f"{last}.{first}"
    return f"{local}@{domain}"


@lru_cache(maxsize=65536)
def is_findable_domain(host: str) -> bool:
    """Whether people at this host can have a findable work address."""
    return (
        "." in host
        and _EMAIL_SYNTAX.match(f"x@{host}") is not None
        and host not in DISPOSABLE_DOMAINS
        and host.rsplit(".", 1)[-1] not in RESERVED_TLDS
    )


def find_email(first_name: str, last_name: str, domain: str) -> dict[str, Any]:
    """The finder row for one person at one company domain."""
    first, last = normalize_name(first_name), normalize_name(last_name)
    host = normalize_domain(domain)
    provider = domain_provider(host) if host else "other"
    if not first or not last or not is_findable_domain(host):
        return _finder_row(None, "not_found", None, 0.0, provider)
    convention = domain_convention(host)
    address = compose_address(convention, first, last, host)
    share = stable_fraction("find", first, last, host)
    if not is_catchall_domain(host):
        if share < 0.60:
            return _finder_row(address, "valid", convention, 1.0, provider)
        if share < 0.80:
            confidence = 0.70 + (share - 0.60) / 0.20 * 0.29
            return _finder_row(address, "valid", convention, confidence, provider)
        return _finder_row(None, "not_found", None, 0.0, provider)
    if share < 0.35:
        confidence = 0.70 + share / 0.35 * 0.29
        return _finder_row(address, "valid_catchall", convention, confidence, provider)
    if share < 0.75:
        confidence = 0.30 + (share - 0.35) / 0.40 * 0.39
        return _finder_row(address, "catchall", convention, confidence, provider)
    if share < 0.90:
        confidence = 0.10 + (share - 0.75) / 0.15 * 0.19
        return _finder_row(address, "catchall", convention, confidence, provider)
    return _finder_row(None, "not_found", None, 0.0, provider)


def _finder_row(
    email: str | None, status: str, convention: str | None, confidence: float, provider: str
) -> dict[str, Any]:
    return {
        "email": email,
        "status": status,
        "convention": convention,
        "confidence": round(confidence, 2),
        "provider": provider,
    }


def outcome(job_type: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """The result row for one (already validated) item of a job."""
    if job_type == "validate":
        return validate_email(item["email"])
    return find_email(item["first_name"], item["last_name"], item["domain"])


def row_cost(job_type: str, row: Mapping[str, Any]) -> float:
    """Credits charged for one result row."""
    if job_type == "validate":
        return VALID_EMAIL_COST if row["status"] == "valid" else 0.0
    return FOUND_EMAIL_COST if row["status"] in ("valid", "valid_catchall") else 0.0


def job_cost(job_type: str, rows: Iterable[Mapping[str, Any]]) -> float:
    """Credits a job with these result rows costs."""
    return float(sum(row_cost(job_type, row) for row in rows))


def max_job_cost(job_type: str, total: int) -> float:
    """The most a job of `total` items can cost: what creating it reserves."""
    return total * UNIT_PRICES[job_type]


# Fast encoders for whole jobs. They give byte-for-byte what
# `msgspec.json.encode(outcome(job_type, item))` gives (tests compare them), but decide
# the domain-level facts once per domain and splice pre-encoded row tails.

_encode = msgspec.json.encode
_HASHER = hashlib.blake2b(digest_size=8)
_UNPACK = struct.Struct(">Q").unpack
# The local part of _EMAIL_SYNTAX: these characters, dots only between them.
_LOCAL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~-."
_DROP_LOCAL_CHARS = str.maketrans("", "", _LOCAL_CHARS)
_DOMAIN_SYNTAX = re.compile(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_TWO_TO_64 = 2**64
_SYNTAX_TAIL = b',"status":"invalid","sub_status":"syntax","provider":"other","domain_info":null}'


def _fraction(key: bytes) -> float:
    # stable_fraction with the parts already joined and encoded.
    hasher = _HASHER.copy()
    hasher.update(key)
    return int(_UNPACK(hasher.digest())[0]) / _TWO_TO_64


def _local_part_ok(local: str) -> bool:
    return (
        bool(local) and local[0] != "." and local[-1] != "." and ".." not in local
        and not local.translate(_DROP_LOCAL_CHARS)
    )


@lru_cache(maxsize=65536)
def _validation_tail(domain: str, status: str, sub_status: str | None) -> bytes:
    """Everything after the email of a validation row for this domain and status."""
    info = domain_info(domain)
    encoded = _encode({
        "status": status, "sub_status": sub_status, "provider": info["provider"],
        "domain_info": info,
    })
    return b"," + encoded[1:]


@lru_cache(maxsize=65536)
def _validation_domain(domain: str) -> tuple[bool, str | None, bool]:
    """(syntax ok, fixed (status, sub_status) tail key or None, catch-all) for a domain."""
    if _DOMAIN_SYNTAX.fullmatch(domain) is None:
        return False, None, False
    if domain.rsplit(".", 1)[-1] in RESERVED_TLDS:
        return True, "no_mx", False
    if domain in DISPOSABLE_DOMAINS:
        return True, "disposable", False
    return True, None, domain_info(domain)["is_catchall"]


def _validation_row_bytes(email: str) -> tuple[bytes, float]:
    normalized = email.strip().lower()
    head = b'{"email":' + _encode(email)
    if len(normalized) > MAX_EMAIL_LENGTH:
        return head + _SYNTAX_TAIL, 0.0
    local, at, domain = normalized.rpartition("@")
    if not at or not _local_part_ok(local):
        return head + _SYNTAX_TAIL, 0.0
    syntax_ok, fixed, catchall = _validation_domain(domain)
    if not syntax_ok:
        return head + _SYNTAX_TAIL, 0.0
    if fixed == "no_mx":
        return head + _validation_tail(domain, "invalid", "no_mx"), 0.0
    if fixed == "disposable":
        return head + _validation_tail(domain, "disposable", "disposable"), 0.0
    if local.split("+", 1)[0] in ROLE_LOCAL_PARTS:
        return head + _validation_tail(domain, "risky", "role_account"), 0.0
    share = _fraction(("validate\x1f" + normalized).encode())
    if catchall:
        status = "valid_catchall" if share < 0.40 else "catchall"
        return head + _validation_tail(domain, status, "catchall"), 0.0
    if share < 0.70:
        return head + _validation_tail(domain, "valid", None), VALID_EMAIL_COST
    if share < 0.90:
        return head + _validation_tail(domain, "invalid", "mailbox_not_found"), 0.0
    return head + _validation_tail(domain, "unknown", "greylisted"), 0.0


@lru_cache(maxsize=65536)
def _finder_host(domain: str) -> tuple[str, str, bool, str | None, bool]:
    """(host, provider, findable, convention, catch-all) for a submitted domain."""
    host = normalize_domain(domain)
    provider = domain_provider(host) if host else "other"
    if not is_findable_domain(host):
        return host, provider, False, None, False
    return host, provider, True, domain_convention(host), is_catchall_domain(host)


def _finder_row_bytes(first_name: str, last_name: str, domain: str) -> tuple[bytes, float]:
    first, last = normalize_name(first_name), normalize_name(last_name)
    host, provider, findable, convention, catchall = _finder_host(domain)
    if not first or not last or not findable or convention is None:
        return _encode(_finder_row(None, "not_found", None, 0.0, provider)), 0.0
    share = _fraction(f"find\x1f{first}\x1f{last}\x1f{host}".encode())
    address = compose_address(convention, first, last, host)
    if not catchall:
        if share < 0.60:
            row = _finder_row(address, "valid", convention, 1.0, provider)
        elif share < 0.80:
            confidence = 0.70 + (share - 0.60) / 0.20 * 0.29
            row = _finder_row(address, "valid", convention, confidence, provider)
        else:
            row = _finder_row(None, "not_found", None, 0.0, provider)
    elif share < 0.35:
        confidence = 0.70 + share / 0.35 * 0.29
        row = _finder_row(address, "valid_catchall", convention, confidence, provider)
    elif share < 0.75:
        confidence = 0.30 + (share - 0.35) / 0.40 * 0.39
        row = _finder_row(address, "catchall", convention, confidence, provider)
    elif share < 0.90:
        confidence = 0.10 + (share - 0.75) / 0.15 * 0.19
        row = _finder_row(address, "catchall", convention, confidence, provider)
    else:
        row = _finder_row(None, "not_found", None, 0.0, provider)
    cost = FOUND_EMAIL_COST if row["status"] in ("valid", "valid_catchall") else 0.0
    return _encode(row), cost


def encode_rows(
    job_type: str, items: Sequence[Mapping[str, Any]]
) -> tuple[list[bytes], list[float]]:
    """The encoded result rows of (already checked) items and each row's cost."""
    if job_type == "validate":
        pairs = [_validation_row_bytes(item["email"]) for item in items]
    else:
        pairs = [
            _finder_row_bytes(item["first_name"], item["last_name"], item["domain"])
            for item in items
        ]
    return [row for row, _ in pairs], [cost for _, cost in pairs]
