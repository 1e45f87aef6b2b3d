"""Deterministic validation and finder outcomes, and their credit cost."""

from __future__ import annotations

import pytest

from tap_gtmcli.sandbox import job_cost
from tap_gtmcli.sandbox.outcomes import (
    find_email,
    normalize_domain,
    normalize_name,
    stable_fraction,
    validate_email,
)
from tap_gtmcli.sandbox.synthetic import synthetic_items

VALIDATION_STATUSES = {"valid", "invalid", "catchall", "valid_catchall", "disposable", "risky",
                       "unknown"}
FINDER_STATUSES = {"valid", "valid_catchall", "catchall", "not_found"}


def test_stable_fraction_is_pinned_across_processes() -> None:
    # blake2b, never the salted hash(): this value must never change between runs.
    assert stable_fraction("validate", "ceo@example.com") == pytest.approx(0.51239165, abs=1e-8)


@pytest.mark.parametrize(
    ("email", "status", "sub_status", "provider"),
    [
        ("jane.doe@gmail.com", None, None, "google"),
        ("jane.doe@googlemail.com", None, None, "google"),
        ("jane.doe@outlook.com", None, None, "microsoft"),
        ("jane.doe@hotmail.com", None, None, "microsoft"),
        ("jane.doe@live.com", None, None, "microsoft"),
        ("jane.doe@icloud.com", None, None, "icloud"),
        ("jane.doe@me.com", None, None, "icloud"),
        ("someone@mailinator.com", "disposable", "disposable", "other"),
        ("someone@guerrillamail.com", "disposable", "disposable", "other"),
        ("someone@10minutemail.com", "disposable", "disposable", "other"),
        ("info@acme.com", "risky", "role_account", None),
        ("support@gmail.com", "risky", "role_account", "google"),
        ("noreply@acme.com", "risky", "role_account", None),
        ("not-an-email", "invalid", "syntax", "other"),
        ("a@@b.com", "invalid", "syntax", "other"),
        ("two words@acme.com", "invalid", "syntax", "other"),
        ("dot..dot@acme.com", "invalid", "syntax", "other"),
        ("", "invalid", "syntax", "other"),
        ("person@nowhere.invalid", "invalid", "no_mx", "other"),
        ("person@service.test", "invalid", "no_mx", "other"),
    ],
)
def test_pinned_validation_rules(
    email: str, status: str | None, sub_status: str | None, provider: str | None
) -> None:
    row = validate_email(email)
    assert row["email"] == email
    assert row["status"] in VALIDATION_STATUSES
    if status is not None:
        assert row["status"] == status
        assert row["sub_status"] == sub_status
    if provider is not None:
        assert row["provider"] == provider


def test_validation_row_shape_and_domain_info() -> None:
    row = validate_email("Jane.Doe@Gmail.com ")
    assert row == {
        "email": "Jane.Doe@Gmail.com ",
        "status": row["status"],
        "sub_status": row["sub_status"],
        "provider": "google",
        "domain_info": {
            "domain": "gmail.com",
            "provider": "google",
            "mx_records": ["aspmx.l.google.com", "alt1.aspmx.l.google.com",
                           "alt2.aspmx.l.google.com"],
            "is_catchall": False,
            "spf": True,
        },
    }
    assert validate_email("bad")["domain_info"] is None
    assert validate_email("x@nowhere.invalid")["domain_info"]["mx_records"] == []


def test_catchall_domains_answer_catchall_or_valid_catchall() -> None:
    statuses = {validate_email(f"person{n}@catchall.io")["status"] for n in range(50)}
    assert statuses == {"catchall", "valid_catchall"}
    assert validate_email("person1@catchall.io")["domain_info"]["is_catchall"] is True


def test_ordinary_addresses_spread_over_valid_invalid_unknown() -> None:
    rows = [validate_email(f"user{n}@gmail.com") for n in range(2000)]
    shares = {status: sum(row["status"] == status for row in rows) / 2000
              for status in ("valid", "invalid", "unknown")}
    assert shares["valid"] == pytest.approx(0.70, abs=0.04)
    assert shares["invalid"] == pytest.approx(0.20, abs=0.04)
    assert shares["unknown"] == pytest.approx(0.10, abs=0.03)
    assert {row["sub_status"] for row in rows if row["status"] == "invalid"} == {
        "mailbox_not_found"
    }


def test_outcomes_are_deterministic_and_case_insensitive() -> None:
    assert validate_email("Some.Body@Example.com")["status"] == validate_email(
        "some.body@example.com"
    )["status"]
    for item in synthetic_items("validate", 200, "determinism"):
        assert validate_email(item["email"]) == validate_email(item["email"])
    for item in synthetic_items("find", 200, "determinism"):
        arguments = (item["first_name"], item["last_name"], item["domain"])
        assert find_email(*arguments) == find_email(*arguments)


def test_find_row_shape_and_pinned_examples() -> None:
    row = find_email("Tim", "Cook", "apple.com")
    assert row == {"email": "tim.cook@apple.com", "status": "valid", "convention": "first.last",
                   "confidence": 1.0, "provider": row["provider"]}
    assert find_email("Satya", "Nadella", "microsoft.com")["convention"] == "flast"


def test_find_normalises_names_and_domains() -> None:
    assert normalize_name("José-María") == "josemaria"
    assert normalize_name("O'Brien") == "obrien"
    assert normalize_name("Zoë") == "zoe"
    assert normalize_domain("https://www.Acme.com/about") == "acme.com"
    accented = find_email("José", "García-Núñez", "https://www.Acme.com/")
    plain = find_email("jose", "garcianunez", "acme.com")
    assert accented == plain


def test_find_not_found_cases() -> None:
    for arguments in (("", "Cook", "apple.com"), ("Tim", "", "apple.com"),
                      ("Tim", "Cook", "localhost"), ("Tim", "Cook", "mailinator.com"),
                      ("Tim", "Cook", "apple.invalid")):
        row = find_email(*arguments)
        assert row["status"] == "not_found"
        assert row["email"] is None
        assert row["convention"] is None


def letters(number: int) -> str:
    """A distinct letters-only name per number (digits are stripped by normalisation)."""
    return "".join(chr(ord("a") + int(digit)) for digit in str(number))


def test_find_convention_is_fixed_per_domain_and_confidence_bands() -> None:
    rows = [find_email(f"Ann{letters(n)}", f"Lee{letters(n)}", "globex.com") for n in range(300)]
    conventions = {row["convention"] for row in rows if row["convention"]}
    assert len(conventions) == 1
    for row in rows:
        assert row["status"] in FINDER_STATUSES
        if row["status"] == "valid":
            assert 0.7 <= row["confidence"] <= 1.0
        if row["status"] == "not_found":
            assert row["email"] is None
    catchall_rows = [
        find_email(f"Bo{letters(n)}", f"Li{letters(n)}", "catchall.io") for n in range(300)
    ]
    for row in catchall_rows:
        if row["status"] == "valid_catchall":
            assert 0.7 <= row["confidence"] <= 0.99
        if row["status"] == "catchall":
            assert 0.1 <= row["confidence"] <= 0.69
    assert {row["status"] for row in catchall_rows} == {"valid_catchall", "catchall", "not_found"}


def test_job_cost_charges_only_valid_and_found() -> None:
    validations = [{"status": status} for status in
                   ("valid", "valid", "invalid", "valid_catchall", "catchall", "risky")]
    assert job_cost("validate", validations) == 0.5
    finds = [{"status": status} for status in ("valid", "valid_catchall", "catchall", "not_found")]
    assert job_cost("find", finds) == 2.0
    assert job_cost("find", []) == 0.0


def test_synthetic_items_are_realistic_and_deterministic() -> None:
    items = synthetic_items("validate", 1000, "x")
    assert items == synthetic_items("validate", 1000, "x")
    assert items != synthetic_items("validate", 1000, "y")
    statuses = {validate_email(item["email"])["status"] for item in items}
    assert {"valid", "invalid", "risky", "disposable"} <= statuses
    people = synthetic_items("find", 100, "x")
    assert all({"first_name", "last_name", "domain"} <= set(item) for item in people)
