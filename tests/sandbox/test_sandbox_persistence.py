"""With a database file, a restarted sandbox still has every job, item and row."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import requests

from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tests.helpers.keys import API_KEY

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def snapshot(server: SandboxServer, session: requests.Session) -> dict[str, object]:
    jobs = session.get(f"{server.url}/v1/jobs", headers=HEADERS, timeout=5).json()["jobs"]
    return {
        "jobs": jobs,
        "results": {job["id"]: session.get(f"{server.url}/v1/jobs/{job['id']}/results",
                                           headers=HEADERS, timeout=5).content for job in jobs},
        "items": {job["id"]: server.job_items(job["id"]) for job in jobs},
        "balance": server.credits_balance(),
    }


def test_restart_on_the_same_database_loses_nothing(tmp_path: Path) -> None:
    database = str(tmp_path / "sandbox.db")
    config = SandboxConfig(api_key=API_KEY, db_path=database, start_delay=0, processing_rate=0, credits=1000)
    with requests.Session() as session:
        session.trust_env = False
        with SandboxServer(config) as first:
            for items in ([{"email": "a@gmail.com"}, {"email": "info@acme.com"}],
                          [{"email": f"p{n}@globex.com"} for n in range(300)]):
                created = session.post(f"{first.url}/v1/jobs", headers=HEADERS, timeout=5,
                                       json={"type": "validate", "data": items})
                assert created.status_code == 201
            first.seed_jobs("find", 50)
            deleted = first.seed_jobs("find", 5)[0]
            first.delete_job(deleted)
            before = snapshot(first, session)
        assert len(before["jobs"]) == 3  # type: ignore[arg-type]
        assert before["balance"] < 1000  # type: ignore[operator]
        with SandboxServer(config) as second:
            after = snapshot(second, session)
            assert second.get_job(before["jobs"][0]["id"])  # type: ignore[index]
    assert after == before


def test_pending_jobs_keep_progressing_across_a_restart(tmp_path: Path) -> None:
    config = SandboxConfig(api_key=API_KEY, db_path=str(tmp_path / "s.db"), start_delay=1000, processing_rate=0)
    with SandboxServer(config) as first:
        job_id = first.create_job("validate", [{"email": "a@gmail.com"}])["id"]
        assert first.get_job(job_id)["status"] == "pending"
    with SandboxServer(config) as second:
        assert second.get_job(job_id)["status"] == "pending"
        second.advance_clock(1001)
        assert second.get_job(job_id)["status"] == "completed"


def test_a_database_from_an_older_layout_starts_afresh(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    with sqlite3.connect(database) as old:
        old.execute("CREATE TABLE job_rows (job_seq INTEGER, idx INTEGER, result BLOB)")
    old.close()
    with SandboxServer(SandboxConfig(api_key=API_KEY, db_path=str(database), start_delay=0)) as server:
        job_id = server.seed_jobs("validate", 3)[0]
        assert server.get_job(job_id)["total"] == 3
