"""Realistic, deterministic contacts for seeding jobs without a client."""

from __future__ import annotations

import hashlib
from typing import Any

FIRST_NAMES = (
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda",
    "William", "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica",
    "Thomas", "Sarah", "Charles", "Karen", "Daniel", "Nancy", "Matthew", "Lisa",
    "Anthony", "Betty", "Mark", "Margaret", "Steven", "Sandra", "Paul", "Ashley",
    "Andrew", "Emily", "Joshua", "Michelle", "Kevin", "Amanda", "Brian", "Melissa",
    "José", "María", "Zoë", "François", "Søren", "Łukasz", "Chloé", "Jürgen",
    "Priya", "Wei", "Hiroshi", "Aisha", "Mateo", "Ingrid", "Olumide", "Siobhan",
)
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
    "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson",
    "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson",
    "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker",
    "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores",
    "Müller", "O'Brien", "García-Núñez", "Van der Berg", "Kowalski", "Østergaard",
    "Nakamura", "Patel", "Okafor", "Dubois", "Rossi", "Schröder", "MacLeod", "Kim",
)
COMPANY_WORDS = (
    "acme", "globex", "initech", "umbrella", "hooli", "vandelay", "stark", "wayne",
    "wonka", "cyberdyne", "soylent", "tyrell", "aperture", "oscorp", "piedpiper",
    "dundermifflin", "gringotts", "monarch", "nakatomi", "wernham", "bluth", "prestige",
    "massive", "sterling", "northwind", "contoso", "fabrikam", "tailspin", "litware",
    "adventureworks", "proseware", "fourthcoffee", "lucerne", "margie", "wingtip",
)
COMPANY_SUFFIXES = ("", "", "", "labs", "hq", "group", "tech", "systems", "data", "cloud")
COMPANY_TLDS = ("com", "com", "com", "io", "co", "net", "ai", "de", "co.uk", "fr")
FREE_MAIL = ("gmail.com", "gmail.com", "outlook.com", "hotmail.com", "yahoo.com", "icloud.com")
ROLES = ("info", "sales", "support", "admin", "hello", "contact", "noreply", "billing")
DISPOSABLE = ("mailinator.com", "guerrillamail.com", "10minutemail.com", "yopmail.com")


def _ascii(name: str) -> str:
    table = str.maketrans("éáíóúëüöøłçñ", "eaioueuooicn")
    return "".join(char for char in name.lower().translate(table) if char.isalpha())


# Email local parts use the plain-ASCII spelling, computed once.
ASCII_FIRST_NAMES = tuple(_ascii(name) for name in FIRST_NAMES)
ASCII_LAST_NAMES = tuple(_ascii(name) for name in LAST_NAMES)


def synthetic_items(job_type: str, count: int, seed: str) -> list[dict[str, Any]]:
    """`count` items for a job of `job_type`; the same seed gives the same items."""
    make = _validate_item if job_type == "validate" else _find_item
    return [make(_draws(seed, index), index) for index in range(count)]


def _draws(seed: str, index: int) -> bytes:
    return hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=12).digest()


def _company_domain(draws: bytes) -> str:
    word = COMPANY_WORDS[draws[2] % len(COMPANY_WORDS)]
    suffix = COMPANY_SUFFIXES[draws[3] % len(COMPANY_SUFFIXES)]
    tld = COMPANY_TLDS[draws[4] % len(COMPANY_TLDS)]
    return f"{word}{suffix}.{tld}"


def _validate_item(draws: bytes, index: int) -> dict[str, Any]:
    first = ASCII_FIRST_NAMES[draws[0] % len(FIRST_NAMES)]
    last = ASCII_LAST_NAMES[draws[1] % len(LAST_NAMES)]
    kind = draws[5] / 256
    if kind < 0.68:
        local = (f"{first}.{last}", f"{first[0]}{last}", first, f"{first}_{last}")[draws[6] % 4]
        email = f"{local}@{_company_domain(draws)}"
    elif kind < 0.84:
        email = f"{first}.{last}{draws[7] % 100}@{FREE_MAIL[draws[8] % len(FREE_MAIL)]}"
    elif kind < 0.90:
        email = f"{ROLES[draws[6] % len(ROLES)]}@{_company_domain(draws)}"
    elif kind < 0.94:
        email = f"{first}{draws[7]}@{DISPOSABLE[draws[8] % len(DISPOSABLE)]}"
    elif kind < 0.97:
        broken = (f"{first}.{last}@@{_company_domain(draws)}", f"{first}{last}.gmail.com",
                  f"{first} {last}@{_company_domain(draws)}", f"{first}@")
        email = broken[draws[6] % len(broken)]
    else:
        email = f"{first}.{last}@{_company_domain(draws).split('.')[0]}.test"
    return {"email": email, "external_id": f"contact-{index + 1}"}


def _find_item(draws: bytes, index: int) -> dict[str, Any]:
    domain = _company_domain(draws)
    messiness = draws[5] / 256
    if messiness < 0.05:
        domain = f"www.{domain}"
    elif messiness < 0.08:
        domain = f"https://{domain}/"
    last = LAST_NAMES[draws[1] % len(LAST_NAMES)] if messiness < 0.98 else ""
    return {
        "first_name": FIRST_NAMES[draws[0] % len(FIRST_NAMES)],
        "last_name": last,
        "domain": domain,
        "external_id": f"contact-{index + 1}",
    }
