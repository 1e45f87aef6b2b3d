"""README.md states what the code does: its settings tables are the plugins' --about."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tap_gtmcli.tap.tap import TapGTMCLI
from tools.readme_settings import README, rendered_readme, settings_table


def test_readme_settings_tables_match_about():
    text = README.read_text(encoding="utf-8")
    assert text == rendered_readme(text), "run: python -m tools.readme_settings"


def test_table_is_what_the_console_script_prints():
    about = subprocess.run(
        [str(Path(sys.executable).with_name("tap-gtmcli")), "--about", "--format=markdown"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert settings_table(TapGTMCLI) in about
    assert "| api_key | True | None |" in settings_table(TapGTMCLI)


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    text = README.read_text(encoding="utf-8")
    first_block = text.split("```sh", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block
    assert "make test" in first_block
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci
