"""`plugins/*.yml` and `meltano.yml` describe our plugins exactly as their `--about` does.

After changing a plugin's settings, rewrite the definition files with
`.venv/bin/python tests/e2e/test_plugin_definitions.py`, then copy their `settings:` into
the plugin's entry in meltano.yml (and .env.example when a setting matters there).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tap_gtmcli.demo.meltano_project import PROJECT_ROOT

pytestmark = pytest.mark.e2e

#: Label and description of each definition (--about has no label).
LABELS = {
    "tap-gtmcli": ("GTMCLI", "GTMCLI async jobs and the results of completed jobs, "
                   "incrementally."),
    "mapper-gtmcli": ("GTMCLI submitter (mapper)", "Submits upstream contacts to GTMCLI as "
                      "async jobs and passes the stream through."),
    "target-gtmcli": ("GTMCLI submitter (target)", "Submits every record it receives to "
                      "GTMCLI as async jobs; writes a ledger of the jobs."),
}
#: (plugin type, name): the Hub-style definition file of each of our plugins.
DEFINITIONS = {
    ("extractors", "tap-gtmcli"): "plugins/extractors/tap-gtmcli--gtmcli.yml",
    ("mappers", "mapper-gtmcli"): "plugins/mappers/mapper-gtmcli--gtmcli.yml",
    ("loaders", "target-gtmcli"): "plugins/loaders/target-gtmcli--gtmcli.yml",
}
#: Settings every SDK plugin gets for free; the Hub lists them apart, and so do we.
SDK_SETTINGS = frozenset({
    "stream_maps", "stream_map_config", "faker_config", "flattening_enabled",
    "flattening_max_depth", "flattening_max_key_length", "flattening_separator",
    "batch_config",
})
#: What plugins/*.yml install: the published package, so the files work in any Meltano
#: project (README "Use it in your own Meltano project"). This repository's own
#: meltano.yml installs the checkout instead, editable.
PUBLISHED_PIP_URL = "tap-gtmcli"
CHECKOUT_PIP_URL = "-e ."
COMPARED_KEYS = ("name", "kind", "label", "description", "sensitive", "value", "options")


def about(executable: str) -> dict[str, Any]:
    """The plugin's `--about --format=json`, from the console script next to this Python."""
    script = Path(sys.executable).parent / executable
    output = subprocess.run([str(script), "--about", "--format=json"], capture_output=True,
                            text=True, check=True).stdout
    return json.loads(output)


def setting_kind(schema: dict[str, Any]) -> str:
    """The Meltano setting kind of a JSON Schema property."""
    types = [t for t in schema.get("type", []) if t != "null"]
    if schema.get("secret"):
        return "password"
    if "enum" in schema:
        return "options"
    if types == ["string"] and schema.get("format") == "date-time":
        return "date_iso8601"
    return {"string": "string", "integer": "integer", "number": "decimal", "boolean": "boolean",
            "array": "array", "object": "object"}[types[0]]


def expected_settings(about_json: dict[str, Any]) -> list[dict[str, Any]]:
    """The Hub-style settings list that `--about` implies, in its order."""
    settings = []
    for name, schema in about_json["settings"]["properties"].items():
        if name in SDK_SETTINGS:
            continue
        setting: dict[str, Any] = {
            "name": name,
            "kind": setting_kind(schema),
            "label": schema["title"],
            "description": schema["description"],
            "sensitive": bool(schema.get("secret")),
        }
        if "default" in schema:
            setting["value"] = schema["default"]
        if "enum" in schema:
            setting["options"] = [{"label": value.capitalize(), "value": value}
                                  for value in schema["enum"]]
        settings.append(setting)
    return settings


def compared(settings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: setting[key] for key in COMPARED_KEYS if key in setting}
            for setting in settings]


def meltano_yml_plugin(plugin_type: str, name: str) -> dict[str, Any]:
    project = yaml.safe_load((PROJECT_ROOT / "meltano.yml").read_text(encoding="utf-8"))
    (plugin,) = [p for p in project["plugins"][plugin_type] if p["name"] == name]
    return plugin


@pytest.mark.parametrize(("plugin_type", "name"), sorted(DEFINITIONS))
def test_definition_file_matches_about(plugin_type: str, name: str) -> None:
    about_json = about(name)
    definition = yaml.safe_load((PROJECT_ROOT / DEFINITIONS[plugin_type, name]).read_text())
    assert definition["name"] == name
    assert definition["executable"] == name
    assert compared(definition["settings"]) == expected_settings(about_json)
    assert set(definition["capabilities"]) == set(about_json["capabilities"])


@pytest.mark.parametrize(("plugin_type", "name"), sorted(DEFINITIONS))
def test_meltano_yml_matches_definition_file(plugin_type: str, name: str) -> None:
    definition = yaml.safe_load((PROJECT_ROOT / DEFINITIONS[plugin_type, name]).read_text())
    plugin = meltano_yml_plugin(plugin_type, name)
    for key in ("namespace", "executable"):
        assert plugin[key] == definition[key], key
    assert (definition["pip_url"], plugin["pip_url"]) == (PUBLISHED_PIP_URL, CHECKOUT_PIP_URL)
    assert set(plugin["capabilities"]) == set(definition["capabilities"])
    assert compared(plugin["settings"]) == compared(definition["settings"])


def write_definitions() -> None:
    """Rewrite every definition file from its plugin's `--about`."""
    for (_, name), path in DEFINITIONS.items():
        about_json = about(name)
        label, description = LABELS[name]
        definition = {
            "name": name, "namespace": name.replace("-", "_"), "variant": "gtmcli",
            "label": label, "description": description, "pip_url": PUBLISHED_PIP_URL,
            "executable": name, "capabilities": about_json["capabilities"],
            "settings_group_validation": [["api_key"]],
            "settings": expected_settings(about_json),
        }
        header = (f"# Meltano Hub-style definition of {name}; tests/e2e/test_plugin_definitions.py"
                  f"\n# keeps it equal to `{name} --about --format=json` and to meltano.yml.\n")
        (PROJECT_ROOT / path).write_text(
            header + yaml.safe_dump(definition, sort_keys=False, allow_unicode=True, width=100),
            encoding="utf-8",
        )


if __name__ == "__main__":
    write_definitions()
