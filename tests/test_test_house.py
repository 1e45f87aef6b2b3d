"""The test suite keeps its own house rules (read from every test module with ast).

- What tests share lives in tests/helpers/ as plain modules; a conftest holds fixtures
  (and pytest hooks) only, so nothing imports from one.
- No module of the suite imports a test module (`test_*.py`), by `from X import` or
  `import X`, relative or absolute, at the top or inside a function: a test module
  holds tests, and what two of them share goes to tests/helpers/.
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


def _is_test_module(dotted: str) -> bool:
    return any(part.startswith("test_") for part in dotted.split("."))


def _imported_test_modules(node: ast.AST) -> list[str]:
    """The test modules an import statement names (relative ones keep their dots)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if _is_test_module(alias.name)]
    if isinstance(node, ast.ImportFrom):
        module = "." * node.level + (node.module or "")
        if _is_test_module(module):
            return [module]
        # `from . import test_x`, `from tests.tap import test_x`
        return [f"{module}{'' if module.endswith('.') else '.'}{alias.name}"
                for alias in node.names if alias.name.startswith("test_")]
    return []


def test_no_module_imports_a_test_module():
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for module in _imported_test_modules(node):
                found.append(f"{path.relative_to(TESTS)}:{node.lineno}: imports {module}")
    assert found == [], (
        "a test module is imported; move what it shares to tests/helpers/:\n"
        + "\n".join(found))


def test_the_import_rule_sees_every_form():
    """The rule above on the forms it must catch, and on imports it must let through."""
    caught = {
        "from tests.tap.test_errors import RESULTS_RULE": ["tests.tap.test_errors"],
        "from .test_pay_once import job_ids": [".test_pay_once"],
        "from ..mapper.test_pay_once import job_ids": ["..mapper.test_pay_once"],
        "from . import test_pay_once": [".test_pay_once"],
        "from tests.mapper import test_pay_once": ["tests.mapper.test_pay_once"],
        "import tests.mapper.test_pay_once": ["tests.mapper.test_pay_once"],
        "import tests.mapper.test_pay_once as pay_once": ["tests.mapper.test_pay_once"],
        "def f():\n    from tests.mapper.test_pay_once import contacts":
            ["tests.mapper.test_pay_once"],
        "from tests.helpers.sandboxes import job_ids": [],
        "from singer_sdk.testing import get_tap_test_class": [],
        "import pytest": [],
    }
    for source, modules in caught.items():
        names = [module for node in ast.walk(ast.parse(source))
                 for module in _imported_test_modules(node)]
        assert names == modules, source


def test_every_test_folder_is_a_package():
    folders = {path.parent for path in _modules()}
    assert sorted(str(folder.relative_to(TESTS)) for folder in folders
                  if not (folder / "__init__.py").exists()) == []
