"""A Dagster code location for a Meltano project's jobs (README "Scheduling").

Installed with the `orchestration` extra and imported only by Dagster (`-m
tap_gtmcli.orchestration.definitions`): the tap, the mapper, the target and the sandbox
never import it. It imports only the shared API layer of tap_gtmcli (for the sensor's one
request), never a plugin.
"""
