"""The README's shell sessions as data: commands (``$ …``, with ``\\`` continuations) and the
output it shows for each, so that tests run them verbatim and compare what ptm prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"
DEMO_FOLDER = "/tmp/ptm-demo-yulhdse9"  # the folder the README's examples were recorded in
_VARYING = [
    (re.compile(r"\b[0-9a-f]{12,64}\b"), "<hex>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"), "<time>"),
]


@dataclass(frozen=True)
class Step:
    command: str
    shown: tuple[str, ...]  # the output lines the README shows after the command


def section(title: str) -> str:
    """The README text from the heading ``title`` to the next heading of its level or higher."""
    text = README.read_text(encoding="utf-8")
    start = text.index(title)
    level = len(title) - len(title.lstrip("#"))
    rest = text[start + len(title) :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def blocks(text: str, *, language: str = "") -> list[list[str]]:
    """The fenced code blocks of ``text`` with exactly this language tag, as lines."""
    found: list[list[str]] = []
    current: list[str] | None = None
    tag = ""
    for line in text.splitlines():
        if current is None and line.startswith("```"):
            current, tag = [], line.removeprefix("```").strip()
        elif current is not None and line == "```":
            if tag == language:
                found.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return found


def sessions(text: str) -> list[Step]:
    """Every ``$ command`` in the untagged blocks of ``text`` with the output shown after it."""
    steps: list[Step] = []
    for lines in blocks(text):
        command: str | None = None
        shown: list[str] = []
        for line in lines:
            if command is not None and command.endswith("\\"):
                command = command[:-1].rstrip() + " " + line.strip()
            elif line.startswith("$ "):
                if command is not None:
                    steps.append(Step(command, tuple(shown)))
                command, shown = line[2:].strip(), []
            elif command is not None:
                shown.append(line)
        if command is not None:
            steps.append(Step(command, tuple(shown)))
    return steps


def normalized(line: str, folder: Path) -> str:
    line = line.replace(DEMO_FOLDER, str(folder)).rstrip()
    for pattern, replacement in _VARYING:
        line = pattern.sub(replacement, line)
    return line


def assert_shown_in(shown: tuple[str, ...], printed: str, folder: Path) -> None:
    """Each line the README shows appears in what was printed, in order (``…`` skips lines)."""
    actual = [normalized(line, folder) for line in printed.splitlines()]
    position = 0
    for line in shown:
        if line.strip() in ("…", ""):
            continue
        wanted = normalized(line, folder)
        assert wanted in actual[position:], f"README line not printed: {wanted!r}\n{printed}"
        position = actual.index(wanted, position) + 1


def run_step(
    step: Step, cwd: Path, folder: Path, env: dict[str, str] | None = None
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Run one README command in bash (with this ptm first on PATH); follow a ``cd``."""
    command = step.command.replace(DEMO_FOLDER, str(folder))
    if command.startswith("cd "):
        cwd = (cwd / command.removeprefix("cd ").strip()).resolve()
        return cwd, subprocess.CompletedProcess(command, 0, "", "")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {}), "PATH": path},
    )
    return cwd, done
