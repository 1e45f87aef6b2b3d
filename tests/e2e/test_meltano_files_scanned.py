"""Every test that runs Meltano has Meltano's own files in the key scan (tests/conftest.py
`_meltano_own_files_in_the_key_scan`): `.meltano/logs`, `.meltano/run`."""

from __future__ import annotations

from tests.helpers import key_scan
from tests.helpers.meltano import MELTANO_OWN_FILES


def test_meltano_own_files_are_watched_while_a_meltano_test_runs() -> None:
    watched = {path for path, _ in key_scan._trees}
    assert {path.name for path in MELTANO_OWN_FILES} == {"logs", "run"}
    assert set(MELTANO_OWN_FILES) <= watched
