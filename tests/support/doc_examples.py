"""The shell and Python examples of README.md and docs/*.md, each with a name and how to treat it.

An example runs unless the line right before its fence says otherwise:

    <!-- docs-example: skip (why) -->   not run; the reason is printed (real AWS, Docker, a GPU)

A block whose info string is not a shell or Python one (toml, json, text, an output listing) is
not an example and is not counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARK = re.compile(r"<!--\s*docs-example:\s*skip\s*\((.+?)\)\s*-->")


@dataclass(frozen=True)
class Example:
    name: str  # file:line
    language: str  # "shell" or "python"
    code: str
    skip: str | None  # the doc's reason, when it is not to be run


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def examples(path: Path) -> list[Example]:
    lines = path.read_text().splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, info = i, match.group(1).lower()
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        language = "shell" if info in SHELL else "python" if info in PYTHON else None
        if language is None:
            continue
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = _MARK.search(before)
        found.append(
            Example(
                f"{path.relative_to(ROOT)}:{start + 1}",
                language,
                "\n".join(body) + "\n",
                mark.group(1) if mark else None,
            )
        )
    return found


def all_examples() -> list[Example]:
    return [example for path in documents() for example in examples(path)]
