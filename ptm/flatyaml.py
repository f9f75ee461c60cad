"""Fast reading of a few top-level fields from flat YAML files, such as ptm writes.

The strict loader (``ptm.schema``) takes about two milliseconds per small file: too slow for an
overview of fifty thousand status files. ``quick_fields`` reads a small subset of YAML (block
mappings and lists of plain or quoted scalars, what ``dump_yaml`` writes) many times faster, and
answers None whenever the *whole* document is not in that subset; ``read_flat_fields`` then falls
back to the strict loader. So a value returned is always the one the strict loader would give,
and a file the strict loader refuses never yields a value (tests/test_flatyaml.py checks both
against adversarial documents).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from ptm.schema import StrictLoader, load_yaml_text

MAX_FLAT_BYTES = 256 * 1024
MAX_QUICK_DEPTH = 16


class _Unsure(Exception):
    """quick_fields met something it does not read exactly as YAML would: use the real loader."""


_PLAIN_START = re.compile(r"[^-?:,\[\]{}#&*!|>'\"%@`\s]")
_PLAIN_BREAKS = re.compile(r": |:$| #|\t")
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]{0,17})")
_DECIMAL_FLOAT = re.compile(r"[-+]?[0-9]{1,15}\.[0-9]{0,15}")
_SIMPLE_WORD = re.compile(r"[a-z][a-z0-9._-]*")  # text for YAML, unless one of _YAML_WORDS
_YAML_WORDS = frozenset(("yes", "no", "true", "false", "on", "off", "null"))
# Text YAML reads as itself: a letter first; then no space before '#', no ':' before a space or
# at the end, no quote, bracket, brace, comma or tab (so: no comment, no mapping, no flow).
_FAST_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9_./@+()=-]*(?:[: ][A-Za-z0-9_./@+()=-]+)*")
_FAST_QUOTED = re.compile(r"'([^'\n]*)'")
_KEY = r"[A-Za-z_][A-Za-z0-9_-]*"
# a token that starts with a digit and has no '.' is an int or text to YAML, never refused
_DIGITS_FIRST = r"[0-9](?:[0-9A-Za-z_:+-]{0,62}[0-9A-Za-z_+-])?"
_ONE_LINE = rf"(?:{_FAST_TEXT.pattern}|{_DIGITS_FIRST}|'[^'\n]*')"
_SIMPLE_DOCUMENT = re.compile(
    rf"(?:{_KEY}: {_ONE_LINE}\n|{_KEY}:\n(?:- {_KEY}: {_ONE_LINE}\n(?:  {_KEY}: {_ONE_LINE}\n)*)+)+"
)
_TOP_KEY = re.compile(rf"^({_KEY}):", re.MULTILINE)
_TOP_LINE = re.compile(rf"^({_KEY}):(?: (.*))?$", re.MULTILINE)
_ITEM = re.compile(rf"^- ({_KEY}):.*\n((?:  {_KEY}:.*\n)*)", re.MULTILINE)
_ITEM_KEY = re.compile(rf"^  ({_KEY}):", re.MULTILINE)
_STR_TAG = "tag:yaml.org,2002:str"
# Tabs, control characters (C0 and C1), what YAML also takes as line breaks, byte order marks,
# and what the strict loader's reader refuses as unprintable.
_NOT_FLAT = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")
_KEY_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*):(?: +(.*?))? *")
_BOOLS = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}


def quick_fields(text: str, keys: Iterable[str]) -> dict[str, Any] | None:
    """Top-level values of ``keys`` from a flat YAML mapping, or None when not sure.

    The whole document must be in the subset: a block mapping at column 0 whose values are
    scalars (plain, single- or double-quoted without escapes, folded over indented lines), flow
    lists of scalars, block lists, or nested block mappings of the same. Anchors, tags, block
    scalars, flow mappings, escapes, document markers, duplicate keys, tabs, CR… give None.
    """
    if _NOT_FLAT.search(text):
        return None
    wanted = frozenset(keys)
    simple = _simple_document(text, wanted)
    if simple is not None:
        return simple
    lines = text.split("\n")
    try:
        document, end = _mapping(lines, 0, 0, 0)
    except _Unsure:
        return None
    if end != len(lines) or not document:  # something at column 0 that is no key; or empty
        return None
    return {key: value for key, value in document.items() if key in wanted}


def _simple_document(text: str, wanted: frozenset[str]) -> dict[str, Any] | None:
    """The shape ptm's status files have, read with a few regular expressions: one-line
    values, and lists of one-level mappings of one-line values; None for anything else (the
    general reading then decides)."""
    if _SIMPLE_DOCUMENT.fullmatch(text) is None:
        return None
    keys = _TOP_KEY.findall(text)
    if len(set(keys)) != len(keys) or not all(_is_text_key(k) for k in keys):
        return None
    for item in _ITEM.finditer(text):
        item_keys = [item[1], *_ITEM_KEY.findall(item[2])]
        if len(set(item_keys)) != len(item_keys) or not all(map(_is_text_key, item_keys)):
            return None
    found: dict[str, Any] = {}
    for match in _TOP_LINE.finditer(text):
        if match[1] in wanted:
            if match[2] is None:  # a wanted key holds a list: the general reading
                return None
            try:
                found[match[1]] = _value(match[2], [])
            except _Unsure:
                return None
    return found


def _is_content(line: str) -> bool:
    """A line that is neither blank nor only a comment."""
    stripped = line.lstrip(" ")
    return bool(stripped) and stripped[0] != "#"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_item(line: str, indent: int) -> bool:
    return line[indent : indent + 2] == "- " or line[indent:] == "-"


def _mapping(lines: list[str], start: int, indent: int, depth: int) -> tuple[dict[str, Any], int]:
    """A block mapping whose keys are at column ``indent``, from line ``start``; (it, next line)."""
    if depth > MAX_QUICK_DEPTH:
        raise _Unsure
    found: dict[str, Any] = {}
    index = start
    while index < len(lines):
        line = lines[index]
        if not _is_content(line):
            index += 1
            continue
        column = _indent(line)
        if column < indent:
            break
        match = _KEY_LINE.fullmatch(line, column)
        if column > indent or match is None or match[1] in found or not _is_text_key(match[1]):
            raise _Unsure
        if _next_is_key(lines, index + 1, indent):  # the common case: a one-line value
            found[match[1]] = _value(match[2], []) if match[2] is not None else None
            index += 1
            continue
        end = _value_end(lines, index + 1, indent)
        found[match[1]] = _node(match[2], lines[index + 1 : end], indent, depth)
        index = end
    return found, index


def _next_is_key(lines: list[str], index: int, indent: int) -> bool:
    """True when line ``index`` starts a key at column ``indent`` (so nothing lies between)."""
    if index >= len(lines):
        return False
    line = lines[index]
    first = line[indent : indent + 1]
    return (first.isalpha() or first == "_") and (not indent or not line[:indent].strip(" "))


@functools.lru_cache(maxsize=256)
def _is_text_key(key: str) -> bool:
    return _implicit_tag(key) == _STR_TAG


def _value_end(lines: list[str], start: int, indent: int) -> int:
    """The line after the last one that belongs to the value of a key at column ``indent``."""
    end = index = start
    while index < len(lines):
        line = lines[index]
        if _is_content(line):
            column = _indent(line)
            if column < indent or (column == indent and not _is_item(line, indent)):
                break
            end = index + 1
        index += 1
    return end


def _node(inline: str | None, block: list[str], indent: int, depth: int) -> Any:
    """The value of a key at column ``indent``: ``inline`` after its colon, then ``block``."""
    if inline is not None:
        return _value(inline, _relative(block, indent))
    content = [line for line in block if _is_content(line)]
    if not content:
        return None
    column = _indent(content[0])
    if _is_item(content[0], column):
        return _sequence(block, column, depth + 1)
    if column > indent:
        value, end = _mapping(block, 0, column, depth + 1)
        if end == len(block):
            return value
    raise _Unsure


def _sequence(block: list[str], indent: int, depth: int) -> list[Any]:
    """A block list whose ``-`` are at column ``indent``; every line of ``block`` must be in it."""
    if depth > MAX_QUICK_DEPTH:
        raise _Unsure
    items: list[Any] = []
    index = 0
    while index < len(block):
        line = block[index]
        if not _is_content(line):
            index += 1
            continue
        if _indent(line) != indent or not _is_item(line, indent):
            raise _Unsure
        end = _value_end(block, index + 1, indent + 1)
        items.append(_item(line, block[index + 1 : end], indent, depth))
        index = end
    return items


def _item(line: str, following: list[str], indent: int, depth: int) -> Any:
    after = line[indent + 1 :]
    content = after.lstrip(" ")
    column = indent + 1 + len(after) - len(content)
    if not content or content.startswith("-"):
        raise _Unsure  # an empty item, or a list in a list
    if _KEY_LINE.fullmatch(content) is not None:  # a mapping that starts on the item's line
        value, end = _mapping([" " * column + content, *following], 0, column, depth + 1)
        if end != len(following) + 1:
            raise _Unsure
        return value
    return _value(content, _relative(following, indent))


def _relative(lines: list[str], indent: int) -> list[str]:
    """Lines of a scalar's continuation, without the first ``indent`` columns (an outdented
    comment becomes ``#``, which no scalar reading accepts)."""
    return [
        line[indent:] if _indent(line) >= indent else ("" if not line.strip(" ") else "#")
        for line in lines
    ]


def _value(raw: str, following: list[str]) -> Any:
    if not following:  # the common one-line values, without the general reading below
        if _FAST_TEXT.fullmatch(raw) and raw.lower() not in _YAML_WORDS:
            return raw
        if _DECIMAL.fullmatch(raw):
            return int(raw)
        quoted = _FAST_QUOTED.fullmatch(raw)
        if quoted:
            return quoted[1]
    if any(line and line[0] != " " for line in following):
        raise _Unsure
    if raw.startswith("["):
        if following:
            raise _Unsure
        return _flow_list(raw)
    return _scalar(raw, following)


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
    if tag.endswith(":float") and _DECIMAL_FLOAT.fullmatch(text):
        return float(text)
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
