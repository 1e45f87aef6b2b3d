"""The package's rooms keep their import rules (read from every module's imports with ast)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tap_gtmcli"
ROOMS = ("api", "tap", "submit", "sandbox", "demo", "orchestration")

#: What each room may import from the package. `demo` drives the products through their
#: console entry points and reads the sandbox; it may also use the shared API layer.
ALLOWED: dict[str, set[str]] = {
    "api": {"api"},
    "tap": {"api", "tap"},
    "submit": {"api", "submit"},
    "sandbox": {"sandbox"},
    "demo": {"api", "sandbox", "demo"},
    # The Dagster code location: installed with the `orchestration` extra, imported by
    # Dagster only (no other room may import it, nor Dagster).
    "orchestration": {"api", "orchestration"},
}


def _package_imports(path: Path) -> set[str]:
    """The `tap_gtmcli.<room>` names a module imports (absolute or relative)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; use tap_gtmcli.<room>"
            if node.module == "tap_gtmcli":
                names.update(f"tap_gtmcli.{alias.name}" for alias in node.names)
            elif node.module:
                names.add(node.module)
    return {name.split(".")[1] for name in names
            if name.startswith("tap_gtmcli.") and name.count(".") >= 1}


def _modules(room: str) -> list[Path]:
    return sorted((PACKAGE / room).rglob("*.py"))


def test_every_module_lives_in_a_room():
    loose = [path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py"]
    assert loose == [], f"modules outside {', '.join(ROOMS)}: {loose}"
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir()} - {"__pycache__"} == set(
        ROOMS
    )


@pytest.mark.parametrize("room", ROOMS)
def test_room_imports_only_what_it_may(room: str):
    broken = {
        str(path.relative_to(PACKAGE)): sorted(_package_imports(path) - ALLOWED[room])
        for path in _modules(room)
    }
    broken = {module: rooms for module, rooms in broken.items() if rooms}
    assert broken == {}, f"{room}/ may import only {sorted(ALLOWED[room])}: {broken}"


@pytest.mark.parametrize("room", ROOMS)
def test_room_init_says_what_it_owns_and_may_import(room: str):
    docstring = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text()))
    assert docstring, f"{room}/__init__.py has no docstring"
    if room in {"api", "tap", "submit"}:
        assert "Owns:" in docstring
        assert "May import:" in docstring


def test_rule_checker_sees_a_forbidden_import(tmp_path: Path):
    module = tmp_path / "bad.py"
    module.write_text("from tap_gtmcli.tap.streams import JobsStream\nimport tap_gtmcli.submit.mapper\n")
    assert _package_imports(module) == {"tap", "submit"}


def _third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_code_location_imports_dagster():
    importers = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                       if "dagster" in _third_party_imports(path))
    assert importers, "the code location no longer imports dagster: update this test"
    assert all(name.startswith("orchestration/") for name in importers), importers


def test_the_wheel_installs_one_top_level_package():
    # The wheel's packages and mypy's (tomllib is not in Python 3.10).
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert re.findall(r"^packages = (.*)$", pyproject, re.MULTILINE) == ['["tap_gtmcli"]'] * 2
