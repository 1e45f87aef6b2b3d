"""The one-command demo (`python -m tap_gtmcli.demo`) and the pieces the e2e tests share.

`meltano_project` drives Meltano in its own virtualenv, `sandbox_process` runs the local
GTMCLI sandbox in the background, `warehouse_summary` reads the DuckDB warehouse.
"""
