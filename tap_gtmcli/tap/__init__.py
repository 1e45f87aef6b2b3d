"""tap-gtmcli: the Singer tap that reads jobs and their results.

Owns: `TapGTMCLI` and its settings (`tap`), the base stream with all API policy
(`client`), the `jobs` and `job_results` streams (`streams`), incremental state
(`job_bookmarks`), one page of results (`result_pages`), pages read ahead across jobs
(`page_pipeline`), the run's one pacer under the rate limit and how many requests fly at
once (`pacer`), the paginator (`pagination`), RECORD lines spliced from page bytes
(`record_lines`), the block-buffered writer (`message_writer`) and the stream schemas.

May import: `tap_gtmcli.api` and the SDK. Never `tap_gtmcli.submit`, `sandbox` or `demo`.
"""
