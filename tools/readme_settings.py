"""Keeps README.md's settings tables equal to each plugin's `--about --format=markdown`.

`python -m tools.readme_settings` rewrites the tables; a test fails when they drift.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from singer_sdk.about import AboutFormatter
from singer_sdk.plugin_base import PluginBase

from tap_gtmcli.submit.mapper import GTMCLIMapper
from tap_gtmcli.submit.target import TargetGTMCLI
from tap_gtmcli.tap.tap import TapGTMCLI

README = Path(__file__).resolve().parent.parent / "README.md"


def _plugins() -> dict[str, type[PluginBase]]:
    return {"tap-gtmcli": TapGTMCLI, "mapper-gtmcli": GTMCLIMapper, "target-gtmcli": TargetGTMCLI}


def settings_table(plugin: type[PluginBase]) -> str:
    """The settings table of a plugin's `--about --format=markdown`."""
    about = AboutFormatter.get_formatter("markdown").format_about(plugin._get_about_info())
    lines = about.splitlines()
    start = lines.index("## Settings") + 2
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return "\n".join(table)


def _block(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- settings:{re.escape(name)} -->\n)(.*?)(<!-- /settings:{re.escape(name)} -->)",
        re.DOTALL,
    )


def rendered_readme(text: str) -> str:
    """README text with every marked settings table regenerated."""
    for name, plugin in _plugins().items():
        table = settings_table(plugin)
        block = _block(name)
        if not block.search(text):
            raise ValueError(f"README.md has no settings block for {name}")
        # The table is bound at once: the lambda runs inside this iteration's sub().
        text = block.sub(lambda match: f"{match[1]}{table}\n{match[3]}", text)  # noqa: B023
    return text


def main() -> int:
    """Rewrite README.md's tables in place."""
    current = README.read_text(encoding="utf-8")
    README.write_text(rendered_readme(current), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
