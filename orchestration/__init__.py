"""A Dagster code location for this repository's Meltano project (README "Scheduling").

Installed with the `orchestration` extra; it imports only the shared API layer of
tap_gtmcli (for the sensor's one request), never a plugin.
"""
