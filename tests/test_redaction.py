"""redaction.py: the key is masked in every log record, and ordinary words are left alone."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from tap_gtmcli.api import redaction
from tap_gtmcli.api.redaction import MASK, MIN_SECRET_LENGTH, SecretMask, redact_secrets_in_logs

KEY = "gtm_live_REDACTION-unit-4e7a0c19"


@pytest.fixture
def stream_handler() -> Iterator[io.StringIO]:
    """A handler on the root logger added AFTER the mask was installed."""
    redact_secrets_in_logs(KEY)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_mask_replaces_the_whole_token_holding_the_key() -> None:
    mask = SecretMask([KEY])
    assert mask(f"Authorization: Bearer {KEY}") == f"Authorization: Bearer {MASK}"
    # Glued to other token characters: the whole token goes, so no part of it shows.
    assert mask(f"key=x{KEY}-tail, next") == f"key={MASK}, next"
    assert mask(f"['{KEY}']") == f"['{MASK}']"


def test_short_values_are_never_masked_so_words_stay_intact() -> None:
    mask = SecretMask(["k", "a" * (MIN_SECRET_LENGTH - 1)])
    assert mask.secrets == set()
    assert mask("bookmark of the job, state kept") == "bookmark of the job, state kept"


def test_a_key_containing_another_is_masked_whole() -> None:
    mask = SecretMask([KEY, KEY[:12]])
    assert mask(f"a {KEY} b {KEY[:12]} c") == f"a {MASK} b {MASK} c"


def test_child_logger_record_reaches_a_handler_added_later_masked(stream_handler) -> None:
    child = logging.getLogger("tap_gtmcli.some.child")
    child.warning("sending %s to %s", KEY, "/v1/jobs")
    assert stream_handler.getvalue() == f"tap_gtmcli.some.child sending {MASK} to /v1/jobs\n"


def test_a_logger_that_does_not_propagate_is_masked_too() -> None:
    redact_secrets_in_logs(KEY)
    stream = io.StringIO()
    logger = logging.getLogger("isolated.library")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        logger.error("key %s", KEY)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert stream.getvalue() == f"key {MASK}\n"


def test_traceback_text_is_masked(stream_handler) -> None:
    try:
        raise ValueError(f"refused {KEY}")
    except ValueError:
        logging.getLogger("tap_gtmcli.x").exception("failed")
    text = stream_handler.getvalue()
    assert "ValueError: refused ***" in text
    assert KEY not in text
    assert KEY.removeprefix("gtm_live_") not in text


def test_ordinary_messages_are_untouched(stream_handler) -> None:
    redact_secrets_in_logs("k")  # a one-letter "key" is ignored
    logging.getLogger("tap_gtmcli.x").info("bookmark %d of %s", 3, "jobs")
    assert stream_handler.getvalue() == "tap_gtmcli.x bookmark 3 of jobs\n"


def test_installing_twice_wraps_the_record_factory_once() -> None:
    redact_secrets_in_logs(KEY)
    factory = logging.getLogRecordFactory()
    redact_secrets_in_logs(KEY, "gtm_live_another-key-000")
    assert logging.getLogRecordFactory() is factory
    assert redaction._installed
