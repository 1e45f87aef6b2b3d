"""mapper-gtmcli and target-gtmcli: submit upstream contacts to GTMCLI as jobs.

Owns: the mapper and the target (`mapper`, `target`), the Singer message router
(`router`), job creation with ambiguous-create reconciliation (`job_creation`),
batches and items (`batches`, `items`), enrichment (`enrich`), held STATE (`state_hold`),
skipping items submitted recently (`resubmit_guard`), where they are remembered
(`submission_index`, `postgres_index`), settling an interrupted run's creates
(`intent_reconciler`),
the Singer line reader and writer (`singer_io`) and the submit settings (`settings`).

May import: `tap_gtmcli.api` and the SDK. Never `tap_gtmcli.tap`, `sandbox` or `demo`.
"""
