"""RESULTS.md holds one section per benchmark script, each rewritten only by its own script.

A section is a level-one heading and everything up to the next one.
"""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the section `# title` of the file at `path` with `body`."""
    heading = f"# {title}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    section = f"{heading}\n{body.strip()}\n"
    if text.startswith(heading):
        start = 0
    else:
        found = text.find("\n" + heading)
        start = found + 1 if found >= 0 else -1
    if start < 0:
        path.write_text((text.rstrip() + "\n\n" if text.strip() else "") + section,
                        encoding="utf-8")
        return
    end = text.find("\n# ", start + len(heading))
    rest = text[end + 1:] if end >= 0 else ""
    path.write_text(text[:start] + section + ("\n" + rest if rest else ""), encoding="utf-8")
