"""The GTMCLI HTTP layer that the tap and the submitter share.

Owns: the client for code that is not an SDK stream (`client`), every exception class
(`errors`), the retry policy on `backoff` (`retry`), page numbering (`paging`), key
redaction in logs and messages (`redaction`), the connection settings every plugin
declares (`settings`) and GTMCLI's timestamps (`timestamps`).

May import: the standard library, `requests`, `backoff`, `msgspec`, `singer_sdk`. Never a
product package (`tap`, `submit`, `sandbox`, `demo`): both products build on this one.
"""
