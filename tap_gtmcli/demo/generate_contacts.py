"""Writes the demo's sample contacts (`contacts.csv`), the same bytes on every run.

Usage: `python -m tap_gtmcli.demo.generate_contacts [--rows N] [--out PATH]`.

The rows look like a CRM export: mostly good contacts, some without an email (left for
the finder), and a few broken ones (bad emails, missing names or domains, stray spaces)
that the mapper must reject or pass through without failing the run.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

DEFAULT_ROWS = 3000
SEED = 20240611
CSV_PATH = Path(__file__).with_name("contacts.csv")
COLUMNS = ("id", "email", "first_name", "last_name", "company", "domain", "title", "country")

FIRST_NAMES = (
    "Ada", "Alan", "Amara", "Ana", "Arjun", "Beatriz", "Ben", "Chen", "Chloe", "Daniel",
    "Divya", "Elena", "Emeka", "Emma", "Fatima", "Felix", "Grace", "Hana", "Hugo", "Ines",
    "Ivan", "Jade", "James", "Jonas", "Julia", "Kai", "Kenji", "Lara", "Leo", "Lina",
    "Lucas", "Maya", "Mateo", "Mei", "Nadia", "Noah", "Olga", "Omar", "Priya", "Rafael",
    "Rosa", "Sam", "Sara", "Sofia", "Tariq", "Theo", "Yara", "Yusuf", "Zoe", "Zoltan",
)
LAST_NAMES = (
    "Adeyemi", "Almeida", "Andersson", "Bauer", "Becker", "Chen", "Costa", "Dubois",
    "Fischer", "Garcia", "Gupta", "Hansen", "Hernandez", "Ivanova", "Jensen", "Kim",
    "Kowalski", "Larsen", "Lopez", "Martin", "Meyer", "Moreau", "Müller", "Nakamura",
    "Nguyen", "Novak", "O'Brien", "Okafor", "Patel", "Petrov", "Rossi", "Santos", "Schmidt",
    "Silva", "Singh", "Smith", "Tanaka", "Van Dijk", "Wagner", "Wang", "Weber", "Yilmaz",
)
# (company, domain, naming convention of its mailboxes)
COMPANIES = (
    ("Acme Analytics", "acme-analytics.com", "first.last"),
    ("Brightpath", "brightpath.io", "first"),
    ("Cobalt Robotics", "cobaltrobotics.com", "flast"),
    ("Deltaforge", "deltaforge.net", "first.last"),
    ("Evergreen Health", "evergreenhealth.org", "firstlast"),
    ("Fjord Logistics", "fjordlogistics.no", "first.last"),
    ("Granite Labs", "granitelabs.dev", "first"),
    ("Harbor Finance", "harborfinance.com", "flast"),
    ("Ion Mobility", "ionmobility.de", "first.last"),
    ("Juniper Retail", "juniperretail.co.uk", "first_last"),
    ("Kestrel Security", "kestrelsec.com", "flast"),
    ("Lumen Studio", "lumenstudio.fr", "first"),
    ("Meridian Foods", "meridianfoods.com", "first.last"),
    ("Northwind Traders", "northwindtraders.com", "first.last"),
    ("Orbit Media", "orbitmedia.es", "firstl"),
    ("Pioneer Energy", "pioneerenergy.com", "flast"),
    ("Quanta Bio", "quantabio.ch", "first.last"),
    ("Riverstone Legal", "riverstonelegal.com", "lastf"),
    ("Summit Cloud", "summitcloud.io", "first"),
    ("Tidewater Shipping", "tidewatershipping.com", "first.last"),
)
FREE_MAIL = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me")
TITLES = (
    "CEO", "CTO", "VP Sales", "Head of Marketing", "Account Executive", "SDR",
    "Data Engineer", "Product Manager", "Customer Success Manager", "Founder", "",
)
COUNTRIES = ("US", "GB", "DE", "FR", "ES", "NL", "NO", "CH", "IN", "BR", "JP", "NG")
ROLE_MAILBOXES = ("info", "sales", "support", "hello")
BROKEN_EMAILS = ("not-an-email", "jane.doe@", "@example.com", "john@@acme.com", "n/a")


def _ascii(name: str) -> str:
    return "".join(c for c in name.lower().replace("ü", "ue") if c.isalnum())


def _local_part(first: str, last: str, convention: str) -> str:
    f, s = _ascii(first), _ascii(last)
    return {
        "first.last": f"{f}.{s}", "first": f, "flast": f"{f[0]}{s}", "firstlast": f"{f}{s}",
        "first_last": f"{f}_{s}", "firstl": f"{f}{s[0]}", "lastf": f"{s}{f[0]}",
    }[convention]


def contact_row(rng: random.Random, row_id: int) -> dict[str, str]:
    """One contact; about 75% good with email, 15% for the finder, 10% broken."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    company, domain, convention = rng.choice(COMPANIES)
    email = f"{_local_part(first, last, convention)}@{domain}"
    roll = rng.random()
    if roll < 0.08:
        email = f"{_local_part(first, last, 'first.last')}@{rng.choice(FREE_MAIL)}"
    elif roll < 0.12:
        email = f"{rng.choice(ROLE_MAILBOXES)}@{domain}"
    elif roll < 0.15:
        email = f"  {email.upper()} "  # messy but usable: stray spaces and capitals
    elif roll < 0.30:
        email = ""  # no email: the finder's job
    elif roll < 0.35:
        email = rng.choice(BROKEN_EMAILS)
    elif roll < 0.38:
        email, first = "", ""  # nothing to validate and not enough to find
    elif roll < 0.40:
        email, domain = "", ""
    return {
        "id": str(row_id),
        "email": email,
        "first_name": first,
        "last_name": last,
        "company": company,
        "domain": domain,
        "title": rng.choice(TITLES),
        "country": rng.choice(COUNTRIES),
    }


def write_contacts(path: Path = CSV_PATH, rows: int = DEFAULT_ROWS, seed: int = SEED) -> None:
    """Write `rows` contacts to `path` deterministically."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row_id in range(1, rows + 1):
            writer.writerow(contact_row(rng, row_id))


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--out", type=Path, default=CSV_PATH)
    args = parser.parse_args()
    write_contacts(args.out, args.rows)


if __name__ == "__main__":
    main()
