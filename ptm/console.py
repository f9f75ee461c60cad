"""Printing for the commands (library code never prints): tables, JSON, warnings."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def say(message: str = "") -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"ptm: warning: {message}", file=sys.stderr, flush=True)


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=False, default=str))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *([_cell(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def shorten(text: str, width: int = 60) -> str:
    """One line of at most ``width`` characters (for a table cell)."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"
