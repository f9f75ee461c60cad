"""Printing for the commands (library code never prints): tables, JSON, warnings.

What a person reads is safe to look at: ``printable`` escapes every control, format and
line-separator character (an escape sequence from a site's reason, an e-mail address or a file
name cannot recolour, move or hide text on a terminal), and ``format_table``, ``shorten`` and
``warn`` apply it. ``print_json`` keeps the real values (JSON escapes them its own way).
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any

# Control characters, invisible format characters (bidi overrides, zero width), line and
# paragraph separators, surrogates, private-use and unassigned code points.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def printable(text: object) -> str:
    """``text`` as one safe line: unsafe characters as ``\\n``, ``\\x1b``, ``\\u202e``…

    A backslash is doubled only when something was escaped, so plain text (Windows paths too)
    reads as it is, and escaped text is unambiguous.
    """
    value = str(text)
    if value.isprintable() and value.isascii():
        return value
    if not any(_unsafe(char) for char in value):
        return value
    return "".join(_escape(char) for char in value)


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    if not _unsafe(char):
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable_lines(text: str) -> str:
    """Each line of ``text`` made printable, the line breaks kept."""
    return "\n".join(printable(line) for line in text.split("\n"))


def say(message: str = "") -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"ptm: warning: {printable(message)}", file=sys.stderr, flush=True)


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=False, default=str))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[printable(h) for h in headers], *([_cell(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _cell(value: object) -> str:
    return "-" if value is None else printable(value)


def shorten(text: str, width: int = 60) -> str:
    """One printable line of at most ``width`` characters (for a table cell)."""
    line = printable(" ".join(text.split()))
    return line if len(line) <= width else line[: width - 1] + "…"
