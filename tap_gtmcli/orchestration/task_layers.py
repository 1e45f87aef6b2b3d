"""Which tasks of a Meltano job may run side by side, and which must wait.

`meltano run JOB` runs its tasks one after another. Under Dagster, consecutive
extract-load tasks whose extractors differ share nothing (each has its own state id and,
for GTMCLI, its own account and rate limit), so they form one layer and run in parallel.
Any other task (a utility, a transform, a second task of the same extractor) starts a
new layer that waits for everything before it, keeping Meltano's order where it matters.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

Task = tuple[str, ...]


def task_layers(tasks: Sequence[Task], extractors: Collection[str]) -> list[list[int]]:
    """The positions of the tasks grouped into layers, in order; a layer's are independent."""
    layers: list[list[int]] = []
    for position, task in enumerate(tasks):
        current = layers[-1] if layers else None
        if (
            current is not None
            and task[0] in extractors
            and all(tasks[other][0] in extractors and tasks[other][0] != task[0]
                    for other in current)
        ):
            current.append(position)
        else:
            layers.append([position])
    return layers
