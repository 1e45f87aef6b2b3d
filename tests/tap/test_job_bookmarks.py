"""The incremental decisions over the job list, without HTTP."""

from __future__ import annotations

from datetime import datetime, timezone

from tap_gtmcli.tap.job_bookmarks import JobBookmarks


def job(job_id: str, second: int, status: str = "completed", job_type: str = "validate") -> dict:
    return {
        "id": job_id,
        "type": job_type,
        "status": status,
        "total": 2,
        "completed": 2 if status == "completed" else 0,
        "created_at": f"2026-04-05T12:00:{second:02d}Z",
    }


def run(state: dict, listing: list[dict], **kwargs) -> list[str]:
    bookmarks = JobBookmarks(state=state, **kwargs)
    bookmarks.observe_all(listing)
    emitted = bookmarks.jobs_to_emit()
    for item in emitted:
        bookmarks.settle(item)
    return [item["id"] for item in emitted]


def test_first_run_emits_everything_oldest_first_and_keeps_only_open_jobs():
    state: dict = {}
    listing = [job("c", 3, "processing"), job("b", 2, "failed"), job("a", 1)]
    assert run(state, listing) == ["a", "b", "c"]
    assert state["newest_created_at"] == "2026-04-05T12:00:03Z"
    assert state["newest_ids"] == ["c"]
    assert list(state["open_jobs"]) == ["c"]


def test_second_run_emits_only_new_and_changed_jobs():
    state: dict = {}
    run(state, [job("c", 3, "processing"), job("b", 2), job("a", 1)])
    listing = [job("d", 4), job("c", 3, "completed"), job("b", 2), job("a", 1)]
    assert run(state, listing) == ["c", "d"]
    assert state["open_jobs"] == {}


def test_unchanged_open_job_is_not_emitted_again():
    state: dict = {}
    run(state, [job("c", 3, "processing")])
    assert run(state, [job("c", 3, "processing")]) == []
    assert "c" in state["open_jobs"]


def test_listing_stops_at_settled_history():
    state: dict = {}
    run(state, [job("b", 2), job("a", 1)])
    bookmarks = JobBookmarks(state=state)
    assert bookmarks.observe(job("c", 3)) is True
    assert bookmarks.observe(job("b", 2)) is True  # same second as the newest: a tie
    assert bookmarks.observe(job("a", 1)) is False


def test_listing_continues_down_to_the_oldest_open_job():
    state: dict = {}
    run(state, [job("c", 3), job("b", 2, "pending"), job("a", 1)])
    bookmarks = JobBookmarks(state=state)
    assert bookmarks.observe(job("c", 3)) is True
    assert bookmarks.observe(job("b", 2, "completed")) is True
    assert bookmarks.observe(job("a", 1)) is False
    assert [item["id"] for item in bookmarks.jobs_to_emit()] == ["b"]


def test_job_created_in_the_same_second_as_the_newest_is_new():
    state: dict = {}
    run(state, [job("a", 1)])
    assert run(state, [job("b", 1), job("a", 1)]) == ["b"]
    assert sorted(state["newest_ids"]) == ["a", "b"]


def test_start_date_and_job_types_filter():
    start = datetime(2026, 4, 5, 12, 0, 2, tzinfo=timezone.utc)
    listing = [job("c", 3, job_type="find"), job("b", 2), job("a", 1)]
    assert run({}, listing, start_date=start) == ["b", "c"]
    assert run({}, listing, job_types=frozenset({"find"})) == ["c"]


def test_open_job_missing_from_the_list_is_reported_vanished():
    state: dict = {}
    run(state, [job("b", 2, "processing"), job("a", 1)])
    bookmarks = JobBookmarks(state=state)
    bookmarks.observe_all([job("a", 1)])
    assert bookmarks.vanished_open_jobs() == ["b"]
    bookmarks.forget("b")
    assert state["open_jobs"] == {}


def test_settling_midway_leaves_unsettled_jobs_for_the_next_run():
    state: dict = {}
    bookmarks = JobBookmarks(state=state)
    bookmarks.observe_all([job("b", 2), job("a", 1)])
    first, _second = bookmarks.jobs_to_emit()
    bookmarks.settle(first)  # the run is killed before "b" is settled
    assert run(state, [job("b", 2), job("a", 1)]) == ["b"]
