"""The private parts of singer-sdk the package relies on, in one place, each with why.

The SDK does not promise to keep its underscore members. The `~=0.54.9` pin keeps us on
the versions these were read from; when the pin moves, this file fails first, naming the
member, what changed and which of our modules to read again (CONTRIBUTING.md "Upgrading
singer-sdk"). Each member is checked with `inspect`: it exists, its parameters are the
ones we call it with or override it with, and, for a hook we override, the SDK still
calls it from where we expect (otherwise our override would silently stop running).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.keys import API_KEY


@dataclass(frozen=True)
class Reliance:
    """One private SDK member and what we do with it."""

    where: str  # "module:Class" (or a module) in singer_sdk
    member: str
    #: The parameters (after `self`) as "name", "name=default" or "*name" (keyword-only);
    #: None for a member that is not called (an attribute, a class).
    parameters: tuple[str, ...] | None
    used_in: str
    why: str
    #: (module:Class.method) in the SDK that must still call the member, for an override.
    called_from: str | None = None

    @property
    def name(self) -> str:
        return f"{self.where}.{self.member}"


RELIANCES = (
    Reliance(
        "singer_sdk.streams.rest:RESTStream", "_request",
        ("prepared_request", "context"),
        "tap_gtmcli/tap/client.py (GTMCLIStream._request, send_with_retries)",
        "Every request passes the rate gate and is timed for the in-flight window; the "
        "results pages read ahead call it from their own threads, outside the SDK's loop.",
        called_from="singer_sdk.streams.rest:RESTStream.request_records",
    ),
    Reliance(
        "singer_sdk.streams.core:Stream", "_sync_records",
        ("context=None", "*write_messages=True"),
        "tap_gtmcli/tap/client.py (get_batches)",
        "BATCH mode reads the records without writing them (write_messages=False) and "
        "puts them in the tap's spool, so one STATE can follow the files of every stream.",
    ),
    Reliance(
        "singer_sdk.streams.core:Stream", "_generate_record_messages",
        ("record",),
        "tap_gtmcli/tap/client.py (GTMCLIStream._generate_record_messages)",
        "Skips the SDK's per-record walk over the selection mask and the schema when it "
        "would change nothing (a third of the tap's CPU time).",
        called_from="singer_sdk.streams.core:Stream._write_record_message",
    ),
    Reliance(
        "singer_sdk.streams.core:Stream", "_write_batch_message",
        ("encoding", "manifest"),
        "tap_gtmcli/tap/client.py (batch_spool's announce)",
        "The spool announces each BATCH file itself, as the file is closed.",
    ),
    Reliance(
        "singer_sdk.streams.core:Stream", "_write_schema_message", (),
        "tap_gtmcli/tap/client.py (GTMCLIStream._write_schema_message)",
        "One SCHEMA per stream per run: the SDK writes one each time a child stream "
        "syncs (once per job), and pipelinewise-family loaders flush on every SCHEMA.",
        called_from="singer_sdk.streams.core:Stream.sync",
    ),
    Reliance(
        "singer_sdk.streams.core:Stream", "_generate_schema_messages", (),
        "tap_gtmcli/tap/client.py (GTMCLIStream._write_schema_message)",
        "The SCHEMA messages the SDK would write (stream maps applied), sent once each.",
    ),
    Reliance(
        "singer_sdk.streams.rest:RESTStream", "_write_request_duration_log",
        ("endpoint", "response", "context", "extra_tags"),
        "tap_gtmcli/tap/client.py (GTMCLIStream._request)",
        "The request's metric, as the SDK's own `_request` writes it, with the pacer "
        "around the send.",
    ),
    Reliance(
        "singer_sdk.streams.rest:RESTStream", "_LOG_REQUEST_METRIC_URLS", None,
        "tap_gtmcli/tap/client.py (GTMCLIStream._request)",
        "Whether the request metric carries the URL, as in the SDK's `_request`.",
    ),
    Reliance(
        "singer_sdk.streams.core:Stream", "_sync_children",
        ("child_context",),
        "tap_gtmcli/tap/streams.py (JobsStream._sync_children)",
        "Jobs without results (pending, failed) have no child context; the SDK would "
        "log a warning for each.",
        called_from="singer_sdk.streams.core:Stream._process_record",
    ),
    Reliance(
        "singer_sdk.streams.core:Stream", "_write_state_message",
        (),
        "tap_gtmcli/tap/streams.py (JobsStream._checkpoint)",
        "A STATE after each settled job (the SDK writes one every 10,000 records), so a "
        "killed run resumes without redoing finished jobs.",
    ),
    Reliance(
        "singer_sdk.streams.core:Stream", "_tap", None,
        "tap_gtmcli/tap/client.py, tap_gtmcli/tap/streams.py",
        "The streams of one run share the tap's rate gate, in-flight window, BATCH spool "
        "and message writer, keyed by the tap object.",
    ),
    Reliance(
        "singer_sdk.streams.core:Stream", "_stream_version", None,
        "tap_gtmcli/tap/client.py (GTMCLIStream._generate_record_messages)",
        "The fast record path writes the same `version` the SDK's path would.",
    ),
    Reliance(
        "singer_sdk.streams.core:Stream", "state_manager", None,
        "tap_gtmcli/tap/streams.py (JobsStream._checkpoint)",
        "`state_manager.is_flushed = False` makes `_write_state_message` write a STATE "
        "the SDK would think already written.",
    ),
    Reliance(
        "singer_sdk.tap_base:Tap", "state_writer", None,
        "tap_gtmcli/tap/client.py (batch_spool's write_state)",
        "The spool writes the tap's STATE once every file it names is announced.",
    ),
    Reliance(
        "singer_sdk.plugin_base:PluginBase", "_handle_termination",
        ("signum", "frame"),
        "tap_gtmcli/submit/mapper.py (GTMCLIMapper._handle_termination)",
        "SIGTERM / SIGINT must stop the creates and exit non-zero; the SDK's handler "
        "exits 0.",
        called_from="singer_sdk.plugin_base:PluginBase._setup_signal_handlers",
    ),
    Reliance(
        "singer_sdk.plugin_base:PluginBase", "_validate_config",
        ("*raise_errors=True",),
        "tap_gtmcli/api/config_check.py (KeySafeConfig._validate_config)",
        "Config errors name the setting, never its value (the SDK's echo the API key).",
        called_from="singer_sdk.plugin_base:PluginBase.__init__",
    ),
    Reliance(
        "singer_sdk.plugin_base:PluginBase", "_config", None,
        "tap_gtmcli/api/config_check.py (KeySafeConfig._validate_config)",
        "The config as given, validated before `config` (a read-only view) is used.",
    ),
    Reliance(
        "singer_sdk.mapper_base:InlineMapper", "_write_messages",
        ("messages",),
        "tap_gtmcli/submit/mapper.py, tap_gtmcli/submit/target.py",
        "Every message the mapper emits goes through its writer here (the target turns "
        "them into confirmations).",
        called_from="singer_sdk.mapper_base:InlineMapper._process_record_message",
    ),
    Reliance(
        "singer_sdk.helpers._batch", "BatchConfig", None,
        "tap_gtmcli/tap/client.py, tap_gtmcli/tap/batch_files.py",
        "The parsed `batch_config` setting: encoding, storage, batch_size.",
    ),
    Reliance(
        "singer_sdk.helpers._batch", "BaseBatchFileEncoding", None,
        "tap_gtmcli/tap/client.py (get_batches)",
        "The encoding each BATCH message names.",
    ),
)


def _resolve(where: str) -> Any:
    module_name, _, qualname = where.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in filter(None, qualname.split(".")):
        target = getattr(target, part)
    return target


def _parameters(function: Callable[..., Any]) -> tuple[str, ...]:
    described = []
    for parameter in list(inspect.signature(function).parameters.values())[1:]:  # no self
        text = parameter.name
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            text = f"*{text}"
        if parameter.default is not inspect.Parameter.empty:
            text = f"{text}={parameter.default!r}"
        described.append(text)
    return tuple(described)


def _advice(reliance: Reliance) -> str:
    return (f"\n  we rely on it in {reliance.used_in}: {reliance.why}\n  Read the SDK's "
            "change log for it, adapt that module, then this entry (CONTRIBUTING.md "
            "\"Upgrading singer-sdk\").")


def _a_stream() -> Any:
    from tap_gtmcli.tap.tap import TapGTMCLI

    tap = TapGTMCLI(config={"api_key": API_KEY})
    return tap, tap.streams["jobs"]


@pytest.mark.parametrize("reliance", RELIANCES, ids=lambda reliance: reliance.name)
def test_a_private_sdk_member_we_rely_on_is_still_there(reliance: Reliance) -> None:
    try:
        owner = _resolve(reliance.where)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"singer-sdk no longer has {reliance.where} ({error}).{_advice(reliance)}")
    if inspect.isclass(owner) and reliance.parameters is None and reliance.member.startswith("_") \
            and not hasattr(owner, reliance.member):
        # An attribute set in __init__: look at one built the way a run builds it.
        tap, stream = _a_stream()
        instance = stream if isinstance(stream, owner) else tap
        present = hasattr(instance, reliance.member)
    else:
        present = hasattr(owner, reliance.member)
    assert present, f"singer-sdk no longer has {reliance.name}.{_advice(reliance)}"
    if reliance.parameters is not None:
        found = _parameters(getattr(owner, reliance.member))
        assert found == reliance.parameters, (
            f"singer-sdk changed the parameters of {reliance.name}: we expect "
            f"{reliance.parameters}, it has {found}.{_advice(reliance)}"
        )


@pytest.mark.parametrize("reliance", [r for r in RELIANCES if r.called_from],
                         ids=lambda reliance: reliance.name)
def test_the_sdk_still_calls_a_member_we_override(reliance: Reliance) -> None:
    assert reliance.called_from is not None
    caller = _resolve(reliance.called_from)
    source = inspect.getsource(caller)
    assert f"self.{reliance.member}" in source, (
        f"{reliance.called_from} no longer calls {reliance.member}: our override in "
        f"{reliance.used_in} would never run.{_advice(reliance)}"
    )


def test_the_state_flag_we_reset_is_the_one_the_sdk_reads() -> None:
    """`_write_state_message` writes only when `state_manager.is_flushed` is False."""
    from singer_sdk.streams.core import Stream

    assert "is_flushed" in inspect.getsource(Stream._write_state_message), (
        "Stream._write_state_message no longer reads state_manager.is_flushed: "
        f"JobsStream._checkpoint's reset may no longer force a STATE."
        f"{_advice(RELIANCES[8])}"
    )
    _, stream = _a_stream()
    assert isinstance(stream.state_manager.is_flushed, bool)


def test_every_private_sdk_import_is_listed() -> None:
    """A new `singer_sdk...._private` import in the package must be listed above."""
    listed = {(reliance.where.partition(":")[0], reliance.member) for reliance in RELIANCES}
    unlisted = []
    for path, module in _package_modules_using_the_sdk():
        for node in ast.walk(module):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("singer_sdk"):
                private_module = any(part.startswith("_") for part in node.module.split("."))
                for alias in node.names:
                    if (private_module or alias.name.startswith("_")) and (
                        node.module, alias.name) not in listed:
                        unlisted.append(f"{path.name}: from {node.module} import {alias.name}")
    assert unlisted == [], f"private SDK imports not in RELIANCES: {unlisted}"


def _package_modules_using_the_sdk() -> list[tuple[Path, ast.Module]]:
    package = Path(__file__).resolve().parent.parent / "tap_gtmcli"
    modules = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        if "singer_sdk" in text:
            modules.append((path, ast.parse(text)))
    return modules


def _sdk_names() -> set[str]:
    """Every underscore member of the SDK classes the package subclasses, and the
    attributes the SDK's `__init__` gives a tap and a stream (those of a tap and a stream
    built as a run builds them, less the ones our own modules assign)."""
    from singer_sdk import InlineMapper, RESTStream, Tap
    from singer_sdk.contrib.msgspec import MsgSpecReader, MsgSpecWriter
    from singer_sdk.plugin_base import PluginBase
    from singer_sdk.singerlib.encoding.base import GenericSingerReader
    from singer_sdk.target_base import Target

    def underscored(names: Iterable[str]) -> set[str]:
        return {name for name in names if name.startswith("_") and not name.startswith("__")}

    ours = {target.attr for _, module in _package_modules_using_the_sdk()
            for node in ast.walk(module) if isinstance(node, ast.Assign | ast.AnnAssign)
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Attribute)}
    names: set[str] = set()
    for owner in (InlineMapper, RESTStream, Tap, PluginBase, Target, MsgSpecReader,
                  MsgSpecWriter, GenericSingerReader):
        names |= underscored(dir(owner))
    for built in _a_stream():
        names |= underscored(vars(built)) - ours
    return names


def test_every_private_sdk_member_the_package_touches_is_listed() -> None:
    """An override of, call to or read of an SDK underscore member (`def _x`, `self._x`,
    `super()._x`, `obj._x`) in a module that imports singer_sdk must be listed above."""
    sdk = _sdk_names()
    listed = {reliance.member for reliance in RELIANCES}
    unlisted: set[str] = set()
    for path, module in _package_modules_using_the_sdk():
        for node in ast.walk(module):
            name = (node.attr if isinstance(node, ast.Attribute)
                    else node.name if isinstance(node, ast.FunctionDef) else None)
            if name and name in sdk and name not in listed:
                unlisted.add(f"{path.relative_to(path.parents[2])}: {name}")
    assert unlisted == set(), f"private SDK members used but not in RELIANCES: {sorted(unlisted)}"


def test_the_upgrade_advice_points_to_a_section_that_exists() -> None:
    """Every failure above sends the reader to CONTRIBUTING.md "Upgrading singer-sdk"."""
    root = Path(__file__).parent.parent
    contributing = (root / "CONTRIBUTING.md").read_text()
    assert "\n## Upgrading singer-sdk\n" in contributing
    assert "tests/test_sdk_contract.py" in contributing.split("## Upgrading singer-sdk")[1]
    assert '"Upgrading singer-sdk"' in _advice(RELIANCES[0])
    assert "upgrade singer-sdk" in (root / "README.md").read_text()
