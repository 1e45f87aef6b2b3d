"""CONTRIBUTING.md's module map is the code's: every module listed, nothing listed that is gone.

The map is the code block after `<!-- module-map -->`: a tree, two spaces per level, a
name then its description. A folder with lines under it is a room whose modules must
each be listed; a folder with none stands for everything in it (`schemas/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
MARKER = "<!-- module-map -->"
#: Where every Python module must be on the map (the shipped packages, the scripts).
CHECKED_ROOTS = ("tap_gtmcli", "orchestration", "benchmarks", "tools")


@dataclass(frozen=True)
class Entry:
    path: str
    is_folder: bool
    has_children: bool


def map_entries(text: str) -> list[Entry]:
    """The entries of the module map in `text`, with their paths from the repository root."""
    block = text.split(MARKER, 1)[1].split("```", 2)[1]
    lines = [line for line in block.splitlines()[1:] if line.strip()]
    parsed: list[tuple[int, str]] = []
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, f"odd indent in the module map: {line!r}"
        parsed.append((indent // 2, line.split()[0]))
    entries, stack = [], []
    for index, (depth, name) in enumerate(parsed):
        del stack[depth:]
        assert len(stack) == depth, f"{name} is indented under no folder"
        path = "/".join([*stack, name.rstrip("/")])
        is_folder = name.endswith("/")
        has_children = index + 1 < len(parsed) and parsed[index + 1][0] > depth
        entries.append(Entry(path, is_folder, has_children))
        if is_folder:
            stack.append(name.rstrip("/"))
    return entries


def unlisted_modules(entries: list[Entry], root: Path, checked: tuple[str, ...]) -> list[str]:
    """Modules under the checked folders that the map leaves out (`__init__.py` aside)."""
    files = {entry.path for entry in entries if not entry.is_folder}
    whole_folders = [entry.path + "/" for entry in entries
                     if entry.is_folder and not entry.has_children]
    missing = []
    for top in checked:
        for module in sorted((root / top).rglob("*.py")):
            path = module.relative_to(root).as_posix()
            # Hidden folders are the machine's, not the code's (benchmarks/.work holds
            # the peers' virtualenvs).
            hidden = any(part.startswith(".") for part in module.relative_to(root).parts)
            if hidden or module.name == "__init__.py" or path in files:
                continue
            if not any(path.startswith(folder) for folder in whole_folders):
                missing.append(path)
    return missing


def gone_entries(entries: list[Entry], root: Path) -> list[str]:
    """What the map names that is not there (a folder must be a folder, a file a file)."""
    return [entry.path for entry in entries
            if not ((root / entry.path).is_dir() if entry.is_folder
                    else (root / entry.path).is_file())]


def test_every_module_is_on_the_map() -> None:
    entries = map_entries(CONTRIBUTING.read_text(encoding="utf-8"))
    checked = tuple(top for top in CHECKED_ROOTS if (ROOT / top).is_dir())
    assert unlisted_modules(entries, ROOT, checked) == []


def test_everything_on_the_map_exists() -> None:
    entries = map_entries(CONTRIBUTING.read_text(encoding="utf-8"))
    assert gone_entries(entries, ROOT) == []


def test_the_checks_see_a_missing_and_a_gone_module(tmp_path: Path) -> None:
    for path in ("pkg/room/kept.py", "pkg/room/new.py", "pkg/schemas/data.py",
                 "pkg/room/__init__.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    text = (f"{MARKER}\n```\npkg/\n  room/      a room\n    kept.py  kept\n"
            "    gone.py  removed since\n  schemas/   whole\n```\n")
    entries = map_entries(text)
    assert [entry.path for entry in entries] == [
        "pkg", "pkg/room", "pkg/room/kept.py", "pkg/room/gone.py", "pkg/schemas"]
    assert unlisted_modules(entries, tmp_path, ("pkg",)) == ["pkg/room/new.py"]
    assert gone_entries(entries, tmp_path) == ["pkg/room/gone.py"]
