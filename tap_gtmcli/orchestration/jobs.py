"""Each Meltano job as a Dagster job: one op per task, layered by `task_layers`.

An op runs `meltano run <its task>`, the same command `meltano run JOB` runs for that
task, so state ids, Meltano's run guard and the system database behave exactly as
under cron. Jobs use the multiprocess executor, so a layer's ops (say, two GTMCLI
accounts) run in separate processes at once.

Each run carries the tag STATE_IDS_TAG, the Meltano state ids its tasks write; the run
queue of `dagster.yaml` starts one run per value at a time, so a second run of a
pipeline waits in the queue for the first instead of being refused by Meltano.
"""

# No `from __future__ import annotations`: Dagster reads the op's annotations at runtime
# to find its context and resources.
import re
from collections.abc import Collection, Iterator

import dagster as dg

from tap_gtmcli.orchestration.meltano_cli import MeltanoCLI
from tap_gtmcli.orchestration.project_file import MeltanoJob
from tap_gtmcli.orchestration.task_layers import Task, task_layers

#: The run tag the run queue's concurrency limit is keyed by (dagster.yaml).
STATE_IDS_TAG = "meltano/state_ids"
#: Set on a run when Meltano's guard refused one of its tasks (the reason as value).
SKIPPED_TAG = "meltano/skipped"


def dagster_name(meltano_name: str) -> str:
    """A Meltano name as a Dagster name (letters, digits and underscores)."""
    return re.sub(r"\W", "_", meltano_name)


def state_ids(
    tasks: Collection[Task], extractors: Collection[str], loaders: Collection[str],
    environment: str | None, suffix: str | None = None,
) -> list[str]:
    """The state ids `meltano run` gives the tasks' extract-load pairs, named as Meltano
    names them: `<environment>:<extractor>-to-<loader>[:<suffix>]`, the loader being the
    first loader after the extractor (mappings between them do not count)."""
    found: set[str] = set()
    for task in tasks:
        for position, block in enumerate(task):
            loader = next((other for other in task[position + 1:] if other in loaders), None)
            if block not in extractors or loader is None:
                continue
            state_id = f"{block}-to-{loader}"
            if environment:
                state_id = f"{environment}:{state_id}"
            if suffix:
                state_id = f"{state_id}:{suffix}"
            found.add(state_id)
    return sorted(found)


def task_op(task: Task, name: str) -> dg.OpDefinition:
    """The op that runs one task with `meltano run`."""
    command = " ".join(task)

    @dg.op(
        name=name,
        description=f"meltano run {command}",
        ins={"after": dg.In(dg.Nothing)},
        out=dg.Out(dg.Nothing),
        tags={"meltano/task": command},
    )
    def run_task(context: dg.OpExecutionContext, meltano: MeltanoCLI) -> Iterator[dg.Output[None]]:
        outcome = meltano.run(task, context.log)
        if outcome.skipped:
            # Not a failure: another worker runs this pipeline and will save its state.
            reason = f"skipped: {outcome.skipped}"
            context.log.warning(f"`meltano run {command}` {reason}")
            context.instance.add_run_tags(context.run_id, {SKIPPED_TAG: outcome.skipped})
            yield dg.Output(None, metadata={"outcome": "skipped", "reason": outcome.skipped})
        else:
            yield dg.Output(None, metadata={"outcome": "ran"})

    return run_task


def dagster_job(
    job: MeltanoJob, meltano: MeltanoCLI, extractors: Collection[str], *,
    loaders: Collection[str] = (), environment: str | None = None, suffix: str | None = None,
) -> dg.JobDefinition:
    """The Dagster job of one Meltano job, tagged with its state ids in `environment`.

    The job carries its `meltano` resource itself: bound by Definitions instead, Dagster
    1.13 copies the sensor and warns (BetaWarning) about its own copy.
    """
    layers = task_layers(job.tasks, extractors)
    # The position keeps names unique when a job repeats a task.
    ops = [task_op(task, f"task_{position}__{dagster_name('__'.join(task))}")
           for position, task in enumerate(job.tasks, start=1)]
    tags = {"meltano/job": job.name}
    pipelines = state_ids(job.tasks, extractors, loaders, environment, suffix)
    if pipelines:
        tags[STATE_IDS_TAG] = ",".join(pipelines)

    @dg.job(
        name=dagster_name(job.name),
        description=f"Meltano job `{job.name}`: "
        + "; then ".join(" and ".join(" ".join(job.tasks[position]) for position in layer)
                         for layer in layers),
        executor_def=dg.multiprocess_executor,
        resource_defs={"meltano": meltano},
        tags=tags,
    )
    def graph() -> None:
        previous: list[object] = []
        for layer in layers:
            previous = [ops[position](after=previous) if previous else ops[position]()
                        for position in layer]

    return graph
