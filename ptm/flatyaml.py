"""Fast reading of a few top-level fields from flat YAML files, such as ptm writes.

The strict loader (``ptm.schema``) takes about two milliseconds per small file: too slow for an
overview of fifty thousand status files. ``quick_fields`` reads the common shapes some fifty
times faster and answers None whenever it is not sure, and ``read_flat_fields`` then falls back
to the strict loader; so the values returned are always those the strict loader would give.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from ptm.schema import StrictLoader, load_yaml_text

MAX_FLAT_BYTES = 256 * 1024


class _Unsure(Exception):
    """quick_fields met something it does not read exactly as YAML would: use the real loader."""


_ITEM_LINE = re.compile(r"( *)- +(.*)")
_PLAIN_START = re.compile(r"[^-?:,\[\]{}#&*!|>'\"%@`\s]")
_PLAIN_BREAKS = re.compile(r": |:$| #|\t")
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_SIMPLE_WORD = re.compile(r"[a-z][a-z0-9._-]*")  # text for YAML, unless one of _YAML_WORDS
_YAML_WORDS = frozenset(("yes", "no", "true", "false", "on", "off", "null"))
_STR_TAG = "tag:yaml.org,2002:str"
# Control characters, and what YAML also takes as line breaks or a byte order mark.
_NOT_FLAT = re.compile("[\x00-\x09\x0b-\x1f\x7f\x85\u2028\u2029\ufeff]")
# A line at column 0 that is not "key: …", "key:", "- item", a comment or blank.
_OTHER_LINE = re.compile(r"^(?![A-Za-z_][A-Za-z0-9_]*:(?: |$)|[ #]|- |-$|$)", re.MULTILINE)
# The end of a key's block: a line break followed by a line that starts something new.
_BLOCK_END = re.compile(r"\n(?![ #\n-])")
_BOOLS = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}


def quick_fields(text: str, keys: Iterable[str]) -> dict[str, Any] | None:
    """Top-level values of ``keys`` from a flat YAML mapping, or None when not sure.

    Reads the shapes ``dump_yaml`` writes and simple hand-written files: ``key: scalar`` (plain,
    single- or double-quoted, folded over indented lines), ``key: [a, b]`` and block lists of
    scalars. It only returns values that the strict loader would read identically; anything else
    (anchors, tags, escapes, nested mappings under a wanted key…) gives None. It does not check
    that the rest of the document is valid YAML. It is some fifty times faster than the loader.
    """
    if _NOT_FLAT.search(text) or _OTHER_LINE.search(text):
        return None
    found: dict[str, Any] = {}
    try:
        for match in _key_lines(frozenset(keys)).finditer(text):
            if match[1] in found:
                raise _Unsure
            found[match[1]] = _value(match[2] or None, _block_after(text, match.end()))
    except _Unsure:
        return None
    return found


@functools.lru_cache(maxsize=16)
def _key_lines(keys: frozenset[str]) -> re.Pattern[str]:
    names = "|".join(re.escape(key) for key in sorted(keys))
    return re.compile(rf"^({names}):(?: +(.*?))? *$", re.MULTILINE)


def _block_after(text: str, end: int) -> list[str]:
    """The lines after a key line that belong to its value (indented, items, comments)."""
    if end + 1 >= len(text) or text[end + 1] not in " #-\n":
        return []
    stop = _BLOCK_END.search(text, end)
    lines = text[end + 1 : stop.start() if stop else len(text)].split("\n")
    while lines and not lines[-1].strip(" "):
        lines.pop()
    return lines


def _value(raw: str | None, following: list[str]) -> Any:
    if raw is None:
        return _block_list(following) if following else None
    if any(line and line[0] != " " for line in following):
        raise _Unsure
    if raw.startswith("["):
        if following:
            raise _Unsure
        return _flow_list(raw)
    return _scalar(raw, following)


def _block_list(lines: list[str]) -> list[Any]:
    items: list[Any] = []
    indent: str | None = None
    for line in lines:
        match = _ITEM_LINE.fullmatch(line.rstrip(" "))
        if match is None or (indent is not None and match[1] != indent):
            raise _Unsure
        indent = match[1]
        items.append(_scalar(match[2], []))
    return items


def _flow_list(raw: str) -> list[Any]:
    body, _ = _split_comment(raw)
    if not (body.startswith("[") and body.endswith("]")) or "{" in body:
        raise _Unsure
    inner = body[1:-1].strip()
    if not inner:
        return []
    parts = [part.strip() for part in inner.split(",")]
    if any(not part or "[" in part or "]" in part for part in parts):
        raise _Unsure
    return [_scalar(part, [], in_flow=True) for part in parts]


def _split_comment(raw: str) -> tuple[str, str]:
    """(value, comment): a comment starts at a " #" outside quotes."""
    if " #" not in raw:
        return raw.rstrip(" "), ""
    quote = ""
    for index, char in enumerate(raw):
        if quote:
            quote = "" if char == quote else quote  # '' toggles twice: still inside
        elif char in "'\"":
            quote = char
        elif char == "#" and index > 0 and raw[index - 1] == " ":
            return raw[:index].rstrip(" "), raw[index:]
    return raw.rstrip(" "), ""


def _scalar(raw: str, following: list[str], *, in_flow: bool = False) -> Any:
    if not following:  # the common cases first: a name, a state, a number
        if _SIMPLE_WORD.fullmatch(raw) and raw not in _YAML_WORDS:
            return raw
        if _DECIMAL.fullmatch(raw):
            return int(raw)
    if not following and raw[:1] in ("'", '"'):
        raw, _ = _split_comment(raw)
    if raw.startswith("'"):
        return _single_quoted(raw, following)
    if raw.startswith('"'):
        return _double_quoted(raw, following)
    if in_flow and ("," in raw or "{" in raw or "}" in raw):
        raise _Unsure
    return _plain(raw, following)


def _single_quoted(raw: str, following: list[str]) -> str:
    lines = [raw[1:], *following]
    lines[-1] = lines[-1].rstrip(" ")
    body = lines[-1][:-1]
    if not lines[-1].endswith("'") or any(_has_lone_quote(line) for line in [*lines[:-1], body]):
        raise _Unsure
    lines[-1] = body
    return _fold(lines).replace("''", "'")


def _has_lone_quote(text: str) -> bool:
    return "'" in text.replace("''", "")


def _double_quoted(raw: str, following: list[str]) -> str:
    text = raw.rstrip(" ")
    if following or "\\" in text or len(text) < 2 or not text.endswith('"'):
        raise _Unsure
    inner = text[1:-1]
    if '"' in inner:
        raise _Unsure
    return inner


def _plain(raw: str, following: list[str]) -> Any:
    first, comment = _split_comment(raw)
    if comment and following:
        raise _Unsure
    if not first or not _PLAIN_START.match(first) or _PLAIN_BREAKS.search(first):
        raise _Unsure
    for line in following:
        stripped = line.strip(" ")
        if stripped and (stripped[0] in "#'\"-" or _PLAIN_BREAKS.search(stripped)):
            raise _Unsure
    text = _fold([first, *following])
    return _resolve_plain(text) if not following else _text_only(text)


def _fold(lines: list[str]) -> str:
    """YAML line folding of a flow scalar: a line break is a space, each empty line a newline."""
    if len(lines) == 1:
        return lines[0]
    pieces = [lines[0].rstrip(" ")]
    empty = 0
    for line in lines[1:-1]:
        if not line.strip(" "):
            empty += 1
            continue
        pieces.append("\n" * empty if empty else " ")
        pieces.append(line.strip(" "))
        empty = 0
    last = lines[-1].lstrip(" ")
    if last or empty:
        pieces.append("\n" * empty if empty else " ")
        pieces.append(last)
    elif len(lines) > 1:
        pieces.append(" ")
    return "".join(pieces)


def _resolve_plain(text: str) -> Any:
    tag = _implicit_tag(text)
    if tag == _STR_TAG:
        return text
    if tag.endswith(":null"):
        return None
    if tag.endswith(":bool"):
        return _BOOLS[text.lower()]
    if tag.endswith(":int") and _DECIMAL.fullmatch(text):
        return int(text)
    raise _Unsure


def _text_only(text: str) -> str:
    if _implicit_tag(text) != _STR_TAG:
        raise _Unsure
    return text


def _implicit_tag(text: str) -> str:
    resolvers = StrictLoader.yaml_implicit_resolvers
    candidates = resolvers.get(text[0] if text else "", []) + resolvers.get(None, [])
    for tag, pattern in candidates:
        if pattern.match(text):
            return str(tag)
    return _STR_TAG


def read_flat_fields(data: bytes, keys: Iterable[str], *, source: str) -> dict[str, Any]:
    """``quick_fields`` of UTF-8 ``data``, or the strict loader's document when it is unsure."""
    wanted = tuple(keys)
    if len(data) <= MAX_FLAT_BYTES:
        try:
            fields = quick_fields(data.decode("utf-8"), wanted)
        except UnicodeDecodeError:
            fields = None
        if fields is not None:
            return fields
    document = load_yaml_text(data, source=source, max_bytes=MAX_FLAT_BYTES)
    return {key: document[key] for key in wanted if key in document}
