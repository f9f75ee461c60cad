"""Task ids and site names: the only strings from outside that become path components.

A name is ``^[a-z0-9][a-z0-9._-]{0,62}$`` matched with ``re.fullmatch`` (so a trailing newline,
which Python's ``$`` would accept, is refused), and never ``.`` or ``..`` (the first character
rule already excludes them; the explicit check keeps that true if the pattern ever changes).
"""

from __future__ import annotations

import re
from typing import TypeGuard

from ptm.errors import InvalidDocument, Problem

NAME_PATTERN = "^[a-z0-9][a-z0-9._-]{0,62}$"
NAME_RULE = "name"

# Explicit ASCII ranges: no re.IGNORECASE or \w, which would admit look-alike Unicode letters.
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def is_valid_name(value: object) -> TypeGuard[str]:
    """True when ``value`` is a string that is safe as a task id or site name."""
    if not isinstance(value, str) or value in (".", ".."):
        return False
    return _NAME.fullmatch(value) is not None


def check_name(value: object, *, kind: str, source: str, path: str = "(top level)") -> str:
    """Return ``value`` when it is a valid name; raise InvalidDocument naming ``kind`` otherwise."""
    if is_valid_name(value):
        return value
    message = f"{_short_repr(value)} is not a valid {kind}: it must match {NAME_PATTERN}"
    raise InvalidDocument([Problem(source, path, NAME_RULE, message)])


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
