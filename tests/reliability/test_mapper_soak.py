"""Random-fault soak for the mapper: 20% 5xx (half of them HTML proxy pages), 5% dropped
connections, 5% truncated answers (creates answer 200, so a truncated create is a job
made whose answer is lost), fixed seed. The run must end with exactly the truth."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.helpers.key_scan import assert_no_key
from tests.helpers.mapper_runs import LEDGER, mapper_settings, run_mapper_in_process
from tests.helpers.sandboxes import fast_sandbox, received_items, received_jobs
from tests.helpers.submit_oracle import contacts_input, mapper_truth

RECORDS = 3000
BATCH = 100


def without_repeats(jobs: list[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
    """The jobs, in order, less the items an earlier job sent; empty jobs dropped."""
    sent: set[tuple] = set()
    result = []
    for job_type, items in jobs:
        fresh = tuple(item for item in items if item not in sent)
        sent.update(fresh)
        if fresh:
            result.append((job_type, fresh))
    return result


@pytest.mark.parametrize("mode", ["submit", "enrich"])
def test_random_fault_soak_mapper_exact_truth(mode, monkeypatch):
    # After a create that got no answer the mapper looks for its job for 2 x
    # request_timeout of real time. The sandbox lists a job the moment it exists, so a
    # twentieth of that changes no outcome here; it saves about a minute of sleeping.
    monkeypatch.setattr("tap_gtmcli.submit.job_creation.GRACE_TIMEOUTS", 0.1)
    messages = contacts_input(RECORDS, BATCH)
    # Every record twice (the second copy in the same batch): dedupe must hold under faults.
    doubled: list[dict] = []
    for message in messages:
        doubled.append(message)
        if message["type"] == "RECORD":
            doubled.append({**message, "record": {**message["record"],
                                                  "email": message["record"]["email"].upper()}})
    extra = {"mode": "enrich", "poll_interval": 0.01, "max_wait": 10} if mode == "enrich" else {}
    with fast_sandbox(create_status=200, error_share=0.2, drop_share=0.05, truncate_share=0.05,
                      fault_seed=11) as server:
        run = run_mapper_in_process(
            mapper_settings(server, batch_size=BATCH, max_retries=10, **extra), doubled
        )
        server.set_faults(error_share=0, drop_share=0, truncate_share=0)
        assert run.ok, f"{run.error!r}\n{run.log[-3000:]}"
        truth = mapper_truth(doubled, BATCH)
        received = Counter(received_items(server))
        # The submission index sends an item once per run even when its copy straddles
        # two batches: every item exactly once, each job without what an earlier one sent.
        once = Counter(set(truth.items))
        assert received == once, (
            f"missing {sum((once - received).values())}, "
            f"extra {sum((received - once).values())}"
        )
        assert sorted(received_jobs(server)) == sorted(without_repeats(truth.jobs))
        assert len(run.records(LEDGER)) == len(truth.jobs)  # a dup straddling a full batch opens the next
        ids = sorted(r["id"] for r in run.records("contacts"))
        assert ids == sorted(m["record"]["id"] for m in doubled if m["type"] == "RECORD")
        assert run.last_state == messages[-1]["value"]
        stats = server.stats()
        assert stats["errors_injected"] > 0 and stats["dropped"] > 0 and stats["truncated"] > 0
        assert_no_key(run.messages, run.log)
