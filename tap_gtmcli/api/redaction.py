"""Keeps the API key out of every log line, whichever library or handler writes it.

The mask is applied where each log record is made (a wrapper around the logging
module's record factory), so it covers every logger, its children, loggers that do not
propagate and handlers added at any time. A message, its arguments and the text of an
attached traceback are rewritten once, before any handler sees them.

A key is masked as the whole token it stands in (letters, digits, `_` and `-` around
it), so nothing of it is left showing. Values shorter than `MIN_SECRET_LENGTH` are not
masked: no real key is that short, and masking "k" would mangle every word holding one.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

MASK = "***"
#: Shorter values are never keys (GTMCLI keys are `gtm_live_` and more); masking them
#: would only mangle ordinary words.
MIN_SECRET_LENGTH = 8
_WORD_CHARACTERS = r"[\w-]*"


class SecretMask:
    """Replaces each token holding a secret by `MASK`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these secrets too (those shorter than `MIN_SECRET_LENGTH` are ignored)."""
        self.secrets |= {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LENGTH}
        if self.secrets:
            # Longest first, so a key that contains another is masked whole.
            alternatives = "|".join(
                re.escape(s) for s in sorted(self.secrets, key=len, reverse=True)
            )
            self._pattern = re.compile(f"{_WORD_CHARACTERS}(?:{alternatives}){_WORD_CHARACTERS}")

    def __call__(self, text: str) -> str:
        """The text with every token holding a secret masked."""
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)


_mask = SecretMask()
_install_lock = threading.Lock()
_installed = False


def _masking_factory(make_record: Callable[..., logging.LogRecord]) -> Callable[..., Any]:
    def make_masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if _mask.secrets:
            mask_record(record, _mask)
        return record

    return make_masked_record


def mask_record(record: logging.LogRecord, mask: SecretMask) -> None:
    """Rewrite a record's message (arguments merged in) and traceback text in place."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        return  # arguments that do not fit the message: the handler reports that
    masked = mask(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        masked = mask(record.exc_text)
        if masked != record.exc_text:
            # Formatters print `exc_text` when set; one that renders the exception
            # itself (the SDK's structured formatter) must not get the unmasked one.
            record.exc_text, record.exc_info = masked, None
    if record.stack_info:
        record.stack_info = mask(record.stack_info)


def redact_secrets_in_logs(*secrets: str) -> None:
    """Mask these secrets in every log record made from now on, in this process."""
    global _installed  # noqa: PLW0603 - one factory wrapper per process, installed once
    with _install_lock:
        _mask.add(secrets)
        if not _installed:
            logging.setLogRecordFactory(_masking_factory(logging.getLogRecordFactory()))
            _installed = True
