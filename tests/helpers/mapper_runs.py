"""The mapper's (and target's) runner: in this process, or `mapper-gtmcli` as a user runs it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tap_gtmcli.api.client import GTMCLIClient
from tap_gtmcli.api.retry import RetryPolicy
from tap_gtmcli.sandbox import SandboxServer
from tap_gtmcli.submit.mapper import GTMCLIMapper
from tap_gtmcli.submit.settings import SubmitSettings
from tap_gtmcli.submit.singer_io import PendingMessage
from tap_gtmcli.submit.submitter import GTMCLISubmitter
from tests.helpers import key_scan
from tests.helpers.capture import captured_log
from tests.helpers.keys import API_KEY
from tests.helpers.singer import MapperRun, read_messages, singer_text
from tests.helpers.tap_runs import cli_environment

MAPPER = str(Path(sys.executable).with_name("mapper-gtmcli"))
TARGET = str(Path(sys.executable).with_name("target-gtmcli"))
#: The streams the mapper adds to its output (README "Submit mode").
LEDGER = "gtmcli_submissions"
REJECTED = "gtmcli_rejected"
#: The mapper settings for fixtures/contacts.singer: its domains are nested.
CONTACTS_SETTINGS = {"streams": ["contacts"], "domain_field": "company.domain", "batch_size": 3}


def mapper_settings(server: SandboxServer | str, **settings: Any) -> dict[str, Any]:
    """The mapper's (or target's) config for a sandbox: quick timeout, few retries."""
    url = server if isinstance(server, str) else server.url
    return {"api_key": API_KEY, "api_url": url, "request_timeout": 2, "max_retries": 3,
            **settings}


def run_plugin(
    config: dict[str, Any], messages: Iterable[Any] | str, client: Any = None,
    plugin: type[GTMCLIMapper] = GTMCLIMapper,
) -> MapperRun:
    """Feed messages (or .singer text) through the mapper, or another plugin class of the
    submit side, in this process. An error that stops the run is returned in `error`,
    with what the run wrote before it."""
    text = messages if isinstance(messages, str) else singer_text(messages)
    output = io.BytesIO()
    error: BaseException | None = None
    with captured_log() as log:
        instance = plugin(config={"api_key": API_KEY, **config}, output=output, client=client)
        try:
            instance.listen(io.StringIO(text))
        except Exception as raised:  # the run stopped: keep what it wrote
            error = raised
        finally:
            instance.output_writer.flush()
    written = output.getvalue().decode()
    key_scan.record("mapper error", repr(error))
    return MapperRun(read_messages(written), stdout=written, error=error, log=log.text)


def run_mapper(
    config: dict[str, Any], messages: Iterable[Any] | str, client: Any = None,
    plugin: type[GTMCLIMapper] = GTMCLIMapper,
) -> list[dict]:
    """`run_plugin`'s output; an error that stops the run is raised. What the run wrote
    is also kept in `run_mapper.last_output`, for a test that expects the error."""
    run = run_plugin(config, messages, client, plugin)
    run_mapper.last_output = run.messages  # type: ignore[attr-defined]
    if run.error is not None:
        raise run.error
    return run.messages


def run_mapper_in_process(config: dict[str, Any], messages: Iterable[Any]) -> MapperRun:
    """`run_plugin` with a client whose retry sleeps are recorded, not slept."""
    sleeps: list[float] = []
    client = GTMCLIClient(
        api_url=config["api_url"], api_key=config["api_key"],
        timeout=float(config.get("request_timeout", 60)),
        retry=RetryPolicy(max_retries=int(config.get("max_retries", 5))),
        sleep=sleeps.append,
    )
    try:
        run = run_plugin(config, messages, client)
    finally:
        client.close()
    run.sleeps = sleeps
    return run


def run_with_clock(
    server: SandboxServer, messages: list[dict], clock: Callable[[], float], **settings: Any
) -> list[dict]:
    """The submitter core (no Singer plugin around it) fed message by message, with
    `clock` as its time, against `server` with `mapper_settings`; its output."""
    config = SubmitSettings.from_config(mapper_settings(server, **settings))
    client = GTMCLIClient(api_url=server.url, api_key=API_KEY)
    submitter = GTMCLISubmitter(settings=config, client=client, clock=clock)
    out: list[dict] = []

    def emit(messages: Any) -> None:
        for message in messages:
            resolved = message.resolve() if isinstance(message, PendingMessage) else [message]
            out.extend(each.body for each in resolved)

    try:
        for message in messages:
            kind = message["type"].lower()
            emit(getattr(submitter, "record" if kind == "record" else kind)(message))
        emit(submitter.finish())
    finally:
        submitter.close()
        client.close()
    return out


def run_mapper_cli(
    config: dict[str, Any], messages: Iterable[Any] | bytes | Path, tmp_path: Path,
    timeout: float = 120, *, command: str = MAPPER, env: Mapping[str, str] | None = None,
) -> MapperRun:
    """Run the `mapper-gtmcli` console script (or `command`, e.g. TARGET) as a user
    does: the messages (or a file's bytes) on stdin, `env` added to the environment."""
    config_path = tmp_path / f"{Path(command).name}-config.json"
    config_path.write_text(json.dumps(config))
    if isinstance(messages, Path):
        data = messages.read_bytes()
    else:
        data = messages if isinstance(messages, bytes) else singer_text(messages).encode()
    done = subprocess.run([command, "--config", str(config_path)], input=data,
                          capture_output=True, timeout=timeout,
                          env={**cli_environment(), **(env or {})}, check=False)
    stdout = done.stdout.decode()
    return MapperRun(read_messages(stdout), returncode=done.returncode, stdout=stdout,
                     stderr=done.stderr.decode())
