"""The mapper against the local sandbox: the exact jobs received and messages emitted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.errors import SubmissionFailedError
from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tap_gtmcli.submit.submitter import LEDGER_STREAM, REJECTED_STREAM
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tests.helpers.mapper_runs import (
    CONTACTS_SETTINGS,
    MAPPER,
    TARGET,
    mapper_settings,
    run_mapper,
    run_mapper_cli,
)
from tests.helpers.sandboxes import submitted_jobs
from tests.helpers.singer import FIXTURES, fixture_messages, fixture_text, of_stream


def expected_contacts_output(out: list[dict]) -> list[tuple]:
    """The shape the contacts fixture must produce (timestamps and ids aside)."""
    upstream = fixture_messages("contacts.singer")
    ledger = [m["record"] for m in of_stream(out, LEDGER_STREAM)]
    rejected = [m["record"] for m in of_stream(out, REJECTED_STREAM)]
    return [
        *(("up", m) for m in upstream[:6]),  # schemas, accounts/1, contacts 1-3
        ("up", upstream[7]),  # contacts 4 (find); STATE 3 held
        ("up", upstream[8]),
        ("schema", REJECTED_STREAM),
        ("rejected", rejected[0]),
        ("up", upstream[9]),
        ("rejected", rejected[1]),
        ("up", upstream[10]),  # contacts 7 fills the validate batch
        ("schema", LEDGER_STREAM),
        ("ledger", ledger[0]),
        ("up", upstream[6]),  # STATE 3 released; STATE 7 held behind the find batch
        ("up", upstream[12]),
        ("up", upstream[13]),
        ("up", upstream[14]),
        ("rejected", rejected[2]),
        ("ledger", ledger[1]),  # end of input: the find job, then STATE 7
        ("up", upstream[11]),
        ("ledger", ledger[2]),
        ("up", upstream[15]),
    ]


def label(out: list[dict]) -> list[tuple]:
    labelled: list[tuple] = []
    for message in out:
        stream = message.get("stream")
        if message["type"] == "SCHEMA" and stream in (LEDGER_STREAM, REJECTED_STREAM):
            labelled.append(("schema", stream))
        elif stream == LEDGER_STREAM:
            labelled.append(("ledger", message["record"]))
        elif stream == REJECTED_STREAM:
            labelled.append(("rejected", message["record"]))
        else:
            labelled.append(("up", message))
    return labelled


def check_contacts_run(out: list[dict], server: Any) -> None:
    assert label(out) == expected_contacts_output(out)
    assert submitted_jobs(server) == [
        (
            "validate",
            [{"email": "ada@acme.io"}, {"email": "grace@navy.mil"}, {"email": "alan@bletchley.uk"}],
        ),
        ("find", [{"first_name": "linus", "last_name": "torvalds", "domain": "linux.org"}]),
        ("validate", [{"email": "margaret@nasa.gov"}]),
    ]
    assert server.stats()["requests"]["POST /v1/jobs"] == 3
    ledger = [m["record"] for m in of_stream(out, LEDGER_STREAM)]
    assert [(row["job_type"], row["item_count"], row["source_stream"]) for row in ledger] == [
        ("validate", 3, "contacts"),
        ("find", 1, "contacts"),
        ("validate", 1, "contacts"),
    ]
    for row in ledger:
        assert server.get_job(row["job_id"])["total"] == row["item_count"]
    assert [
        (r["source_stream"], r["reason"], json.loads(r["record"])["id"])
        for r in of_stream(out, REJECTED_STREAM)
        for r in [r["record"]]
    ] == [
        (
            "contacts",
            "email_field 'email' is empty and first_name_field 'first_name' is missing",
            5,
        ),
        (
            "contacts",
            "email_field 'email' is missing and domain_field 'company.domain' is missing",
            6,
        ),
        (
            "contacts",
            "email_field 'email' is not a string (int) and "
            "first_name_field 'first_name' is missing",
            9,
        ),
    ]


def test_contacts_fixture_in_process(sandbox: Any) -> None:
    out = run_mapper(mapper_settings(sandbox, **CONTACTS_SETTINGS), fixture_text("contacts.singer"))
    check_contacts_run(out, sandbox)


def test_contacts_fixture_through_the_console_script(sandbox: Any, tmp_path: Path) -> None:
    result = run_mapper_cli(
        mapper_settings(sandbox, **CONTACTS_SETTINGS), FIXTURES / "contacts.singer", tmp_path
    )
    assert result.returncode == 0, result.stderr
    check_contacts_run(result.messages, sandbox)


def test_402_mid_run_stops_before_the_state_of_unsubmitted_records(tmp_path: Path) -> None:
    messages = fixture_messages("two_batches.singer")
    # Each two-email job costs 0.25 credits once done, but a create holds its worst case
    # (2 x 0.25): 0.6 covers the first hold, and the second create gets a real 402.
    db = str(tmp_path / "sandbox.db")
    with SandboxServer(
        SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0, credits=0.6, db_path=db)
    ) as server:
        result = run_mapper_cli(
            mapper_settings(server, batch_size=2), FIXTURES / "two_batches.singer", tmp_path
        )
        out = result.messages
        stderr = result.stderr
        assert result.returncode == 1
        assert "402" in stderr
        assert "credits" in stderr
        assert "Traceback" not in stderr
        # Job 1 exists, so STATE 2 went out; STATE 4 covers the refused batch and did not.
        assert [m for m in out if m["type"] == "STATE"] == [messages[3]]
        assert of_stream(out, "contacts") == [messages[1], messages[2], messages[4], messages[5]]
        assert submitted_jobs(server) == [
            ("validate", [{"email": "a@one.io"}, {"email": "b@one.io"}])
        ]
        assert server.stats()["requests"]["POST /v1/jobs"] == 2
        assert "Submitted 1 GTMCLI jobs (2 items); not submitted: 1 batches (2 items)" in stderr
    # A rerun with credits (the same account, topped up) from the last STATE that went
    # out submits exactly what was not confirmed: the rest once, nothing twice.
    rest = [messages[0], *messages[4:]]
    (tmp_path / "rest.singer").write_text("".join(json.dumps(m) + "\n" for m in rest))
    with SandboxServer(
        SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0, credits=10, db_path=db)
    ) as server:
        rerun = run_mapper_cli(mapper_settings(server, batch_size=2), tmp_path / "rest.singer",
                               tmp_path)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert submitted_jobs(server) == [
            ("validate", [{"email": "a@one.io"}, {"email": "b@one.io"}]),
            ("validate", [{"email": "c@two.io"}, {"email": "d@two.io"}]),
        ]
        out = rerun.messages
        assert [m for m in out if m["type"] == "STATE"] == [messages[6]]
        assert "Submitted 1 GTMCLI jobs (2 items)\n" in rerun.stderr


def test_a_refused_key_reports_no_job_as_submitted(tmp_path: Path) -> None:
    """A 401 on every create: the summary counts what GTMCLI confirmed (nothing), and
    names every batch as not submitted."""
    with SandboxServer(SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0)) as server:
        server.add_fault_rules(
            [{"method": "POST", "path_prefix": "/v1/jobs", "status": 401, "count": 10}]
        )
        result = run_mapper_cli(mapper_settings(server, batch_size=1),
                                FIXTURES / "two_batches.singer", tmp_path)
        assert submitted_jobs(server) == []
    stderr = result.stderr
    assert result.returncode == 1
    assert "Submitted 0 GTMCLI jobs (0 items); not submitted: 4 batches (4 items)" in stderr
    assert "Submitted 4" not in stderr


def test_402_in_process_raises_and_holds_the_state(sandbox: Any) -> None:


    class SecondCreateRefused(GTMCLIClient):
        def create_job(self, *args: Any, **kwargs: Any) -> dict:
            job = super().create_job(*args, **kwargs)
            sandbox.add_fault_rules(
                [{"method": "POST", "path_prefix": "/v1/jobs", "status": 402, "count": 1}]
            )
            return job

    client = SecondCreateRefused(api_url=sandbox.url, api_key=API_KEY)
    messages = fixture_messages("two_batches.singer")
    with pytest.raises(SubmissionFailedError, match=r"402 .*credits"):
        run_mapper(mapper_settings(sandbox, batch_size=2), messages, client)
    out = run_mapper.last_output  # type: ignore[attr-defined]
    assert [m for m in out if m["type"] == "STATE"] == [messages[3]]
    assert len(submitted_jobs(sandbox)) == 1


@pytest.mark.parametrize(
    ("sandbox_settings", "fault"),
    [
        # The job is created but the answer is cut short: the mapper must adopt it.
        (
            {"create_status": 200},
            {"method": "POST", "path_prefix": "/v1/jobs", "body": "truncated", "count": 1},
        ),
        # The connection drops before anything is created: the mapper must resubmit.
        ({}, {"method": "POST", "path_prefix": "/v1/jobs", "body": "drop", "count": 1}),
        # A 502 from a proxy: ambiguous, nothing was created, resubmitted once.
        (
            {},
            {
                "method": "POST",
                "path_prefix": "/v1/jobs",
                "status": 502,
                "body": "html",
                "count": 1,
            },
        ),
    ],
    ids=["created-answer-lost", "dropped", "proxy-502"],
)
def test_ambiguous_create_yields_exactly_one_job_per_batch(
    sandbox_settings: dict, fault: dict
) -> None:


    config = SandboxConfig(api_key=API_KEY, start_delay=0, processing_rate=0, **sandbox_settings)
    with SandboxServer(config) as server:
        server.add_fault_rules([fault])
        out = run_mapper(
            mapper_settings(server, batch_size=2), fixture_messages("two_batches.singer")
        )
        assert submitted_jobs(server) == [
            ("validate", [{"email": "a@one.io"}, {"email": "b@one.io"}]),
            ("validate", [{"email": "c@two.io"}, {"email": "d@two.io"}]),
        ]
        ledger_ids = [m["record"]["job_id"] for m in of_stream(out, LEDGER_STREAM)]
        assert len(set(ledger_ids)) == 2
        assert [m["type"] for m in out].count("STATE") == 2


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"mode": "replay"}, "mode"),
        ({"batch_size": 100_001}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"email_field": ""}, "email_field"),
        ({"domain_field": "  "}, "domain_field"),
        ({"job_type": "guess"}, "job_type"),
    ],
)
def test_invalid_settings_stop_the_run_at_start(settings: dict, named: str, tmp_path: Path) -> None:
    config = {"api_key": API_KEY, "api_url": "http://127.0.0.1:9", **settings}
    result = run_mapper_cli(config, FIXTURES / "two_batches.singer", tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert named in result.stderr
    assert_no_key(result.stderr)


def test_the_api_key_never_appears_in_any_output(sandbox: Any, tmp_path: Path) -> None:
    sandbox.add_fault_rules(
        [
            {
                "method": "POST",
                "path_prefix": "/v1/jobs",
                "status": 429,
                "retry_after": "0",
                "count": 1,
            },
            {"method": "POST", "path_prefix": "/v1/jobs", "status": 401, "count": 1},
        ]
    )
    outputs = []
    for command in (MAPPER, TARGET):
        result = run_mapper_cli(
            mapper_settings(sandbox, batch_size=2),
            FIXTURES / "contacts.singer",
            tmp_path,
            command=command,
            env={"LOGLEVEL": "DEBUG"},
        )
        outputs.append(result)
    assert outputs[0].returncode == 1
    assert "401" in outputs[0].stderr
    for result in outputs:
        assert_no_key(result.stdout)
        assert_no_key(result.stderr)
    about = subprocess.run([MAPPER, "--about", "--format", "json"], capture_output=True, check=True)
    assert b'"secret": true' in about.stdout
