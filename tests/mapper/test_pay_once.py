"""Pay once per contact: items submitted within `resubmit_after_days` are not sent again.

Every run here goes to an in-process sandbox; what was paid for is read from the
sandbox's jobs and credit balance, never from the mapper's own account of it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from singer_sdk.exceptions import ConfigValidationError

from tap_gtmcli.submit.resubmit_guard import SKIPPED_JOB_PREFIX
from tap_gtmcli.submit.submission_index import (
    MELTANO_INDEX_PATH,
    SQLiteIndex,
    account_secret,
    default_location,
)
from tap_gtmcli.submit.submitter import LEDGER_STREAM
from tap_gtmcli.submit.target import TargetGTMCLI
from tests.helpers.keys import API_KEY
from tests.helpers.mapper_runs import mapper_settings as sandbox_config  # the lead renames
from tests.helpers.mapper_runs import run_mapper, run_mapper_cli, run_with_clock
from tests.helpers.sandboxes import job_ids, received_items
from tests.helpers.singer import contacts, fixture_messages, of_stream, record, schema

DAY = 86_400.0
ENRICH = {"mode": "enrich", "poll_interval": 0.01, "max_wait": 10}


def assert_key_absent(*outputs: Any) -> None:
    """The API key (or its secret part) is in none of the outputs."""
    for output in outputs:
        text = output if isinstance(output, str) else json.dumps(output, default=str)
        assert API_KEY not in text
        assert API_KEY.split("_", 2)[-1] not in text


@pytest.fixture(autouse=True)
def _key_stays_out_of_the_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every log line of every run in this module is checked for the API key."""
    caplog.set_level(logging.DEBUG)
    yield
    assert_key_absent(caplog.text)


def upstream_records(out: list[dict]) -> list[dict]:
    return [m["record"] for m in of_stream(out, "contacts")]


def test_unchanged_rerun_submits_nothing_and_passes_every_record(
    sandbox: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = sandbox_config(sandbox, batch_size=30, submission_index=str(tmp_path / "i.sqlite"))
    messages = contacts(100)
    first = run_mapper(config, messages)
    paid = received_items(sandbox)
    assert len(paid) == 100
    before = job_ids(sandbox)

    with caplog.at_level(logging.INFO):
        second = run_mapper(config, messages)

    assert job_ids(sandbox) == before  # no job at all
    assert upstream_records(second) == upstream_records(first) == [
        m["record"] for m in messages if m["type"] == "RECORD"
    ]
    assert [m["value"] for m in second if m["type"] == "STATE"][-1] == messages[-1]["value"]
    ledger = [m["record"] for m in of_stream(second, LEDGER_STREAM)]
    assert [row["item_count"] for row in ledger] == [0, 0, 0, 0]
    assert [row["skipped_item_count"] for row in ledger] == [30, 30, 30, 10]
    assert all(row["job_id"].startswith(SKIPPED_JOB_PREFIX) for row in ledger)
    assert "Skipped 100 items submitted in the last 30 days" in caplog.text
    assert_key_absent(first, second, caplog.text)


def test_one_new_contact_submits_exactly_that_item(
    sandbox: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = sandbox_config(sandbox, submission_index=str(tmp_path / "i.sqlite"))
    run_mapper(config, contacts(1969))
    before = job_ids(sandbox)

    with caplog.at_level(logging.INFO):
        out = run_mapper(config, [*contacts(1969), record(id=5000, email="new@Example.com")])

    assert received_items(sandbox, job_ids(sandbox) - before) == [
        ("validate", "new@example.com")
    ]
    [row] = [m["record"] for m in of_stream(out, LEDGER_STREAM)]
    assert (row["item_count"], row["skipped_item_count"]) == (1, 1969)
    assert len(upstream_records(out)) == 1970
    assert "Skipped 1,969 items submitted in the last 30 days" in caplog.text
    assert_key_absent(out, caplog.text)


def test_items_are_submitted_again_past_the_window(sandbox: Any, tmp_path: Path) -> None:
    index = str(tmp_path / "i.sqlite")
    now = 1_900_000_000.0
    messages = contacts(20)
    run_with_clock(sandbox, messages, lambda: now, submission_index=index)
    before = job_ids(sandbox)
    # 29 days and 23 hours later: still inside the 30-day window.
    inside = run_with_clock(sandbox, messages, lambda: now + 30 * DAY - 3600,
                            submission_index=index)
    assert job_ids(sandbox) == before
    # Past the window, every item is paid for again, once.
    past = run_with_clock(sandbox, messages, lambda: now + 30 * DAY + 1, submission_index=index)
    assert Counter(email for _, email in received_items(sandbox, job_ids(sandbox) - before)) == {
        f"person{number}@example.com": 1 for number in range(20)
    }
    assert of_stream(inside, LEDGER_STREAM)[0]["record"]["skipped_item_count"] == 20
    assert of_stream(past, LEDGER_STREAM)[0]["record"]["skipped_item_count"] == 0
    assert_key_absent(inside, past)


def test_a_shorter_window_never_prunes_what_a_longer_one_still_counts(
    sandbox: Any, tmp_path: Path
) -> None:
    """The mapper and the target share the default index, workers share a PostgreSQL one:
    a run with a 1-day window must not delete the 30-day history of the others."""
    index = str(tmp_path / "i.sqlite")
    now = 1_900_000_000.0
    messages = contacts(20)
    run_with_clock(sandbox, messages, lambda: now, submission_index=index)
    before = job_ids(sandbox)
    # Ten days later a 1-day run sends everything again (its own window is over) ...
    run_with_clock(sandbox, contacts(1), lambda: now + 10 * DAY,
                   submission_index=index, resubmit_after_days=1)
    resent = job_ids(sandbox) - before
    assert len(resent) == 1
    # ... and the next 30-day run still knows the other 19 items from day 0.
    again = run_with_clock(sandbox, messages, lambda: now + 10 * DAY + 60,
                           submission_index=index)
    assert job_ids(sandbox) - before == resent
    assert of_stream(again, LEDGER_STREAM)[0]["record"]["skipped_item_count"] == 20
    # Fifteen days on, another 1-day run (over a new item) still keeps the 30-day history:
    # the longest window is remembered, not only that of the run before.
    run_with_clock(sandbox, [schema(), record(id=99, email="late@example.com")],
                   lambda: now + 25 * DAY, submission_index=index, resubmit_after_days=1)
    sent = job_ids(sandbox)
    later = run_with_clock(sandbox, messages, lambda: now + 25 * DAY + 60,
                           submission_index=index)
    assert job_ids(sandbox) == sent
    assert of_stream(later, LEDGER_STREAM)[0]["record"]["skipped_item_count"] == 20
    assert_key_absent(again, later)


def test_resubmit_after_days_zero_sends_everything_every_run(sandbox: Any, tmp_path: Path) -> None:
    config = sandbox_config(sandbox, resubmit_after_days=0,
                            submission_index=str(tmp_path / "never-made" / "i.sqlite"))
    outputs = [run_mapper(config, contacts(5)), run_mapper(config, contacts(5))]
    assert len(received_items(sandbox)) == 10
    assert_key_absent(outputs)
    assert not (tmp_path / "never-made").exists()


def test_enriching_an_unchanged_list_costs_nothing_and_enriches_every_record(
    sandbox: Any, tmp_path: Path
) -> None:
    config = sandbox_config(sandbox, **ENRICH, streams=["contacts"], batch_size=4,
                            domain_field="company.domain",
                            submission_index=str(tmp_path / "i.sqlite"))
    messages = fixture_messages("contacts.singer")
    balance = sandbox.credits_balance()
    first = run_mapper(config, messages)
    sandbox.wait_until_processed()
    spent_first = balance - sandbox.credits_balance()
    jobs_first = job_ids(sandbox)

    second = run_mapper(config, messages)

    assert spent_first > 0
    assert sandbox.credits_balance() == balance - spent_first  # nothing spent again
    assert job_ids(sandbox) == jobs_first
    enriched_first, enriched_second = upstream_records(first), upstream_records(second)
    assert enriched_second == enriched_first
    sent = [r for r in enriched_second if r["gtmcli_job_id"] is not None]
    assert len(sent) == 6  # every record with an item; the rejected ones carry nulls
    assert all(r["gtmcli_status"] for r in sent)
    assert [m["value"] for m in second if m["type"] == "STATE"][-1] == messages[-1]["value"]
    assert_key_absent(first, second)


def test_enrich_fetches_again_what_fell_out_of_the_window(sandbox: Any, tmp_path: Path) -> None:
    index = str(tmp_path / "i.sqlite")
    messages = [schema(), record(id=1, email="a@x.io"), record(id=2, email="b@x.io")]
    now = 1_900_000_000.0
    run_with_clock(sandbox, messages, lambda: now, submission_index=index, **ENRICH)
    before = job_ids(sandbox)
    later = run_with_clock(sandbox, messages, lambda: now + 31 * DAY, submission_index=index,
                           **ENRICH)
    assert len(received_items(sandbox, job_ids(sandbox) - before)) == 2
    [job_id] = job_ids(sandbox) - before
    assert {r["gtmcli_job_id"] for r in upstream_records(later)} == {job_id}
    assert_key_absent(later)


def test_target_skips_what_it_submitted(sandbox: Any, tmp_path: Path) -> None:
    config = sandbox_config(sandbox, submission_index=str(tmp_path / "i.sqlite"))
    run_mapper(config, contacts(12), plugin=TargetGTMCLI)
    before = job_ids(sandbox)
    out = run_mapper(config, contacts(13), plugin=TargetGTMCLI)
    assert received_items(sandbox, job_ids(sandbox) - before) == [
        ("validate", "person12@example.com")
    ]
    assert out == [m for m in contacts(13) if m["type"] == "STATE"]
    assert_key_absent(out)


def test_submit_then_enrich_fetches_results_it_never_kept(sandbox: Any, tmp_path: Path) -> None:
    """Submit mode keeps no result, so a later enrich of the same items sends them."""
    config = sandbox_config(sandbox, submission_index=str(tmp_path / "i.sqlite"))
    run_mapper(config, contacts(3))
    enriched = run_mapper({**config, **ENRICH}, contacts(3))
    assert len(received_items(sandbox)) == 6
    assert all(r["gtmcli_status"] for r in upstream_records(enriched))
    assert_key_absent(enriched)


@pytest.mark.parametrize("damage", ["garbage", "directory", "truncated job"])
def test_a_broken_index_stops_the_run_before_anything_is_submitted(
    sandbox: Any, tmp_path: Path, damage: str
) -> None:
    index = tmp_path / "i.sqlite"
    if damage == "garbage":
        index.write_bytes(b"this is not a SQLite database, it is a text file" * 100)
    elif damage == "directory":
        index.mkdir()
    else:
        run_mapper(sandbox_config(sandbox, submission_index=str(index)), contacts(3))
        with sqlite3.connect(index) as db:
            db.execute("UPDATE jobs SET digests = substr(digests, 1, 20)")
    paid = len(received_items(sandbox))
    done = run_mapper_cli(sandbox_config(sandbox, submission_index=str(index)), contacts(30),
                          tmp_path)

    stderr = done.stderr
    assert done.returncode == 1, stderr[-2000:]
    assert f"The submission index {index} could not be" in stderr
    assert "Traceback" not in stderr
    assert done.stdout == ""  # nothing passed on: the run stopped before reading
    assert len(received_items(sandbox)) == paid
    assert_key_absent(stderr)


def test_accounts_never_share_entries() -> None:
    sandbox_account = account_secret("http://127.0.0.1:8765", "sandbox-key")
    assert account_secret("http://127.0.0.1:8765/", "sandbox-key") == sandbox_account
    assert account_secret("https://api.gtmcli.com", "sandbox-key") != sandbox_account
    assert account_secret("http://127.0.0.1:8765", "other-key") != sandbox_account
    assert b"sandbox-key" not in sandbox_account


def test_the_index_holds_no_personal_data_and_no_key(sandbox: Any, tmp_path: Path) -> None:
    index = tmp_path / "i.sqlite"
    config = sandbox_config(sandbox, **ENRICH, submission_index=str(index))
    out = run_mapper(config, [schema(), record(id=1, email="Ada.Lovelace@Example.com")])
    assert_key_absent(out)
    data = b"".join(path.read_bytes() for path in tmp_path.glob("i.sqlite*"))
    for secret in (b"ada.lovelace", b"Ada.Lovelace", API_KEY.encode(),
                   API_KEY.split("_", 2)[-1].encode()):
        assert secret not in data
    store = SQLiteIndex(str(index))
    try:
        assert store.size_bytes() > 0
    finally:
        store.close()


def test_default_location_is_inside_the_meltano_project(tmp_path: Path) -> None:
    assert default_location({"MELTANO_PROJECT_ROOT": str(tmp_path)}) == str(
        tmp_path / MELTANO_INDEX_PATH
    )
    assert default_location({"HOME": "/home/ada", "XDG_DATA_HOME": ""}).endswith(
        "gtmcli/submission_index.sqlite"
    )


@pytest.mark.parametrize("value", [-1, "30", 1.5])
def test_resubmit_after_days_must_be_a_whole_number_of_days(value: Any) -> None:
    with pytest.raises(ConfigValidationError) as caught:
        run_mapper({"resubmit_after_days": value}, [])
    assert "resubmit_after_days" in " ".join(caught.value.errors)


def test_the_sqlite_index_prunes_what_fell_out_of_the_window(tmp_path: Path) -> None:
    path = str(tmp_path / "i.sqlite")
    old, new = [bytes([1]) * 16, bytes([2]) * 16], [bytes([3]) * 16]
    store = SQLiteIndex(path)
    try:
        store.start(since=0)
        store.record(old, job_id="job_old", job_type="validate", now=100)
        store.record(new, job_id="job_new", job_type="validate", now=200)
        store.record_results([(old[0], b"{}")], now=100)
    finally:
        store.close()

    store = SQLiteIndex(path)
    try:
        store.start(since=150)
        assert store.claim([*old, *new], now=300, since=150, need_results=False) == {new[0]: None}
        assert store.claim(old, now=300, since=150, need_results=True) == {}
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT job_id FROM jobs").fetchall() == [("job_new",)]
        assert db.execute("SELECT count(*) FROM results").fetchone() == (0,)


def test_a_postgresql_index_without_its_driver_names_the_setting_and_the_extra(
    sandbox: Any, tmp_path: Path
) -> None:
    """psycopg is the `postgres` extra: a user who sets a `postgresql://` index without
    it is told which setting needs what, and how to install it; nothing is submitted."""
    # A `psycopg` package that fails to import, first on the path: as if not installed.
    shadow = tmp_path / "no-driver" / "psycopg"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n"
    )
    config = sandbox_config(sandbox, submission_index="postgresql://worker@127.0.0.1:1/index")
    done = run_mapper_cli(config, contacts(3), tmp_path, env={"PYTHONPATH": str(shadow.parent)})

    stderr = done.stderr
    assert done.returncode == 1, stderr[-2000:]
    assert (
        "submission_index is a postgresql:// URL, but the PostgreSQL driver (psycopg) is not "
        "installed" in stderr
    )
    assert "pip install 'tap-gtmcli[postgres]'" in stderr
    assert "Traceback" not in stderr
    assert done.stdout == ""
    assert received_items(sandbox) == []
    assert_key_absent(stderr)
