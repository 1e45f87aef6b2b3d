"""The test suite keeps its own house rules (read from every test module with ast).

- What tests share lives in tests/helpers/ as plain modules; a conftest holds fixtures
  (and pytest hooks) only, so nothing imports from one.
- Every test folder is a package, so that two test files of one name cannot collide.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _modules() -> list[Path]:
    return sorted(path for path in TESTS.rglob("*.py") if "__pycache__" not in path.parts)


def test_nothing_imports_from_a_conftest():
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("conftest"):
                names = [alias.name for alias in node.names]
                found.append(f"{path.relative_to(TESTS)}: from {node.module} import {names}")
    assert found == [], f"move these to tests/helpers/: {found}"


def test_a_conftest_defines_fixtures_and_hooks_only():
    """Module-level functions of a conftest are fixtures or `pytest_*` hooks; classes and
    other functions belong in tests/helpers/."""
    found = []
    for path in _modules():
        if path.name != "conftest.py":
            continue
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            if isinstance(node, ast.ClassDef):
                found.append(f"{path.relative_to(TESTS)}: class {node.name}")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                fixture = any("fixture" in ast.unparse(decorator)
                              for decorator in node.decorator_list)
                if not fixture and not node.name.startswith("pytest_"):
                    found.append(f"{path.relative_to(TESTS)}: def {node.name}")
    assert found == [], f"move these to tests/helpers/: {found}"


def test_every_test_folder_is_a_package():
    folders = {path.parent for path in _modules()}
    assert sorted(str(folder.relative_to(TESTS)) for folder in folders
                  if not (folder / "__init__.py").exists()) == []
