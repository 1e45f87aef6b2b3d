"""Keeps the API key out of every log line, whichever library writes it."""

from __future__ import annotations

import logging

MASK = "***"


class SecretRedactingFilter(logging.Filter):
    """Replaces each secret in a record's final message with a mask."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [secret for secret in secrets if secret]

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drop it."""
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, MASK)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact_secrets_in_logs(*secrets: str) -> None:
    """Install the filter on every handler of the root logger and on new handlers' path."""
    log_filter = SecretRedactingFilter(list(secrets))
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(log_filter)
    # Records from loggers that propagate pass the root's handlers; filtering the
    # loggers too covers handlers configured later by the SDK.
    root.addFilter(log_filter)
