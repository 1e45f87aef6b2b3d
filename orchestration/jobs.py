"""Each Meltano job as a Dagster job: one op per task, layered by `task_layers`.

An op runs `meltano run <its task>`, the same command `meltano run JOB` runs for that
task, so state ids, Meltano's run guard and the system database behave exactly as
under cron. Jobs use the multiprocess executor, so a layer's ops (say, two GTMCLI
accounts) run in separate processes at once.
"""

# No `from __future__ import annotations`: Dagster reads the op's annotations at runtime
# to find its context and resources.
import re
from collections.abc import Collection

import dagster as dg

from orchestration.meltano_cli import MeltanoCLI
from orchestration.project_file import MeltanoJob
from orchestration.task_layers import Task, task_layers


def dagster_name(meltano_name: str) -> str:
    """A Meltano name as a Dagster name (letters, digits and underscores)."""
    return re.sub(r"\W", "_", meltano_name)


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
    def run_task(context: dg.OpExecutionContext, meltano: MeltanoCLI) -> None:
        meltano.run(task, context.log)

    return run_task


def dagster_job(job: MeltanoJob, extractors: Collection[str]) -> dg.JobDefinition:
    """The Dagster job of one Meltano job."""
    layers = task_layers(job.tasks, extractors)
    # The position keeps names unique when a job repeats a task.
    ops = [task_op(task, f"task_{position}__{dagster_name('__'.join(task))}")
           for position, task in enumerate(job.tasks, start=1)]

    @dg.job(
        name=dagster_name(job.name),
        description=f"Meltano job `{job.name}`: "
        + "; then ".join(" and ".join(" ".join(job.tasks[position]) for position in layer)
                         for layer in layers),
        executor_def=dg.multiprocess_executor,
        tags={"meltano/job": job.name},
    )
    def graph() -> None:
        previous: list[object] = []
        for layer in layers:
            previous = [ops[position](after=previous) if previous else ops[position]()
                        for position in layer]

    return graph
