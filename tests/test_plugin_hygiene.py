"""What all three plugins share: config errors without values, the key masked in every
log line, the version they report, and the 401 message the README quotes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tap_gtmcli.api.config_check import api_url_errors
from tap_gtmcli.sandbox import SandboxConfig, SandboxServer
from tests.helpers.key_scan import assert_no_key
from tests.helpers.keys import API_KEY
from tools.readme_settings import README

BIN = Path(sys.executable).parent
PLUGINS = ("tap-gtmcli", "mapper-gtmcli", "target-gtmcli")
#: A setting of each plugin that wants a number, for "a key pasted in the wrong place".
NUMBER_SETTING = {"tap-gtmcli": "max_parallel_requests", "mapper-gtmcli": "batch_size",
                  "target-gtmcli": "batch_size"}
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run(plugin: str, *arguments: str, config: dict | None = None, tmp_path: Path | None = None,
        env: dict | None = None, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    command = [str(BIN / plugin), *arguments]
    if config is not None:
        assert tmp_path is not None
        path = tmp_path / f"{plugin}.json"
        path.write_text(json.dumps(config))
        command += ["--config", str(path)]
    return subprocess.run(command, input=stdin.decode(), capture_output=True, text=True,
                          timeout=60, env={**ENV, **(env or {})}, check=False)


def error_lines(stderr: str) -> list[str]:
    return [line.rsplit("| ", 1)[-1] for line in stderr.splitlines() if "| ERROR" in line]


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_list_valued_key_is_named_not_echoed(plugin, tmp_path) -> None:
    done = run(plugin, config={"api_key": [API_KEY]}, tmp_path=tmp_path)
    assert done.returncode == 1
    assert error_lines(done.stderr) == ["api_key: must be string, not array",
                                        "Config validation failed"]
    assert_no_key(done.stdout, done.stderr)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_key_pasted_into_another_setting_is_named_not_echoed(plugin, tmp_path) -> None:
    setting = NUMBER_SETTING[plugin]
    done = run(plugin, config={"api_key": "gtm_live_the-right-place-0001", setting: API_KEY},
               tmp_path=tmp_path)
    assert done.returncode == 1
    assert f"{setting}: must be integer or null, not string" in error_lines(done.stderr)
    assert_no_key(done.stdout, done.stderr)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_missing_key_is_named(plugin, tmp_path) -> None:
    done = run(plugin, config={}, tmp_path=tmp_path)
    assert done.returncode == 1
    assert "api_key: required setting is missing" in error_lines(done.stderr)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_every_plugin_masks_the_key_in_log_lines_of_handlers_added_later(plugin) -> None:
    """In a fresh process: build the plugin, then add a handler and log the key from a
    child logger (what a library would do)."""
    classes = {"tap-gtmcli": "tap_gtmcli.tap.tap:TapGTMCLI",
               "mapper-gtmcli": "tap_gtmcli.submit.mapper:GTMCLIMapper",
               "target-gtmcli": "tap_gtmcli.submit.target:TargetGTMCLI"}
    module, name = classes[plugin].split(":")
    script = (
        "import importlib, logging, sys\n"
        f"plugin = getattr(importlib.import_module({module!r}), {name!r})\n"
        "plugin(config={'api_key': sys.argv[1]})\n"
        "handler = logging.StreamHandler(sys.stdout)\n"
        "logging.getLogger().addHandler(handler)\n"
        "logging.getLogger('urllib3.connectionpool.child').warning('Bearer %s', sys.argv[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, API_KEY], capture_output=True,
                          text=True, timeout=60, env=ENV, check=True)
    assert done.stdout == "Bearer ***\n"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_about_and_the_start_up_line_report_the_package_version(plugin, tmp_path) -> None:
    version = metadata.version("tap-gtmcli")
    about = json.loads(run(plugin, "--about", "--format=json").stdout)
    assert about["version"] == version
    started = run(plugin, config={}, tmp_path=tmp_path)
    assert f"{plugin} v{version}, Meltano SDK" in started.stderr


def test_the_401_message_is_the_one_the_readme_quotes(tmp_path) -> None:
    with SandboxServer(SandboxConfig(api_key=API_KEY)) as sandbox:
        done = run("tap-gtmcli", config={"api_key": API_KEY + "-wrong",
                                         "api_url": sandbox.url}, tmp_path=tmp_path)
    assert done.returncode == 1
    message = next(line for line in error_lines(done.stderr) if "401" in line)
    assert f"| 401 | fails at once: ``{message}`` |" in README.read_text(encoding="utf-8")


@pytest.mark.parametrize("plugin", PLUGINS)
def test_the_variables_the_401_message_names_are_read(plugin, tmp_path) -> None:
    """`TAP_GTMCLI_API_KEY` and its siblings set the key (`--config ENV` here, as Meltano
    does for plugins it runs): a run with only the variable is accepted by the sandbox."""
    prefix = plugin.upper().replace("-", "_")
    contacts = (b'{"type":"SCHEMA","stream":"c","schema":{"type":"object"},"key_properties":[]}\n'
                b'{"type":"RECORD","stream":"c","record":{"email":"a@example.com"}}\n')
    with SandboxServer(SandboxConfig(api_key=API_KEY, start_delay=0,
                                     processing_rate=0)) as sandbox:
        env = {f"{prefix}_API_KEY": API_KEY, f"{prefix}_API_URL": sandbox.url}
        done = run(plugin, "--config", "ENV", env=env, stdin=contacts)
        assert done.returncode == 0, done.stderr[-2000:]
        routes = sandbox.stats()["requests"]
    assert routes.get("GET /v1/jobs", 0) >= 1
    assert plugin == "tap-gtmcli" or routes.get("POST /v1/jobs") == 1


@pytest.mark.parametrize(("url", "problem"), [
    ("gtmcli.example.com", "must start with http:// or https://"),
    ("ftp://api.gtmcli.com", "must start with http:// or https://"),
    ("https://:8765", "names no host"),
    ("https://api.gtmcli.com/v1", "must not end in /v1"),
    ("http://127.0.0.1:8765/v1/", "must not end in /v1"),
    ("https://api.gtmcli.com/api", "must have no path, query or fragment"),
    ("https://api.gtmcli.com?x=1", "must have no path, query or fragment"),
    ("https://api.gtmcli.com:http", "the port must be a number from 1 to 65535"),
    ("https://api.gtmcli.com:70000", "the port must be a number from 1 to 65535"),
    ("https://user:secret@api.gtmcli.com", "must not hold a user name or password"),
])
def test_a_bad_api_url_is_named_without_its_value(url, problem) -> None:
    (message,) = api_url_errors({"api_url": url})
    assert message.startswith(f"api_url: {problem}")
    assert url not in message


@pytest.mark.parametrize("url", ["https://api.gtmcli.com", "https://api.gtmcli.com/",
                                 "http://127.0.0.1:8765", "http://localhost:8765/"])
def test_a_base_url_passes(url) -> None:
    assert api_url_errors({"api_url": url}) == []


@pytest.mark.parametrize("plugin", PLUGINS)
def test_every_plugin_stops_at_start_up_on_a_bad_api_url(plugin, tmp_path) -> None:
    done = run(plugin, config={"api_key": "gtm_live_the-right-place-0001",
                               "api_url": f"{API_KEY}.example.com/v1"}, tmp_path=tmp_path)
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        "api_url: must start with http:// or https:// (http(s)://host[:port], e.g."
        " https://api.gtmcli.com)", "Config validation failed"]
    assert_no_key(done.stdout, done.stderr)


def test_discovery_without_a_config_names_what_is_missing() -> None:
    done = run("tap-gtmcli", "--discover")
    assert done.returncode == 0
    assert json.loads(done.stdout)["streams"]
    warnings = [line.rsplit("| ", 1)[-1] for line in done.stderr.splitlines()
                if "| WARNING" in line]
    assert warnings == ["Config validation failed (going on without it): api_key: required"
                        " setting is missing"]
