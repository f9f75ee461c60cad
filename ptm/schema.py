"""Safe YAML loading and JSON Schema validation, with errors that name file, field and rule.

Everything ptm reads from a registry is hostile until proven otherwise, so the loader is strict
before it is helpful:

- the size is checked (``lstat``) before anything is read; symlinks and non-regular files are
  refused, and ``O_NOFOLLOW`` keeps a swap after the check from redirecting the read;
- bytes must be UTF-8; one document per file, whose top level is a mapping;
- anchors and aliases are refused outright: the simplest defence against alias bombs;
- tags (``!!python/object``, ``!!binary``…) and merge keys (``<<``) are refused, keys must be
  unique strings, numbers finite, nesting bounded;
- timestamps stay strings (YAML 1.1 would make ``2026-11-29T10:00:00Z`` a datetime, not JSON).

Validation reports every problem at once, sorted by JSON path, as ``Problem`` objects whose
``rule`` is the JSON Schema keyword that failed (``required``, ``pattern``…) or, for problems
found while reading, a short name such as ``duplicate-key`` or ``yaml-alias``.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, ValidationError

from ptm.errors import InvalidDocument, Problem

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 64
FILE_PATH = "(file)"
TOP_LEVEL = "(top level)"
SCHEMA_NAMES = ("task", "site", "status", "registry", "cancel", "site-entry")


def load_yaml_text(
    text: str | bytes, *, source: str, max_bytes: int = MAX_DOCUMENT_BYTES
) -> dict[str, Any]:
    """Parse one YAML document whose top level is a mapping; raise InvalidDocument otherwise."""
    if isinstance(text, str):
        if len(text) > max_bytes:  # a character is at least one byte: too big without encoding
            _refuse_size(source, len(text), max_bytes, unit="characters")
        data = text.encode("utf-8", errors="surrogatepass")
    else:
        data = text
    if len(data) > max_bytes:
        _refuse_size(source, len(data), max_bytes)
    return _parse(_decode(data, source=source), source=source)


def load_yaml_file(
    path: Path, *, source: str | None = None, max_bytes: int = MAX_DOCUMENT_BYTES
) -> dict[str, Any]:
    """Read and parse ``path``: a regular file (not a symlink) of at most ``max_bytes``."""
    name = source if source is not None else str(path)
    data = _read_regular_file(path, source=name, max_bytes=max_bytes)
    return load_yaml_text(data, source=name, max_bytes=max_bytes)


def load_document(
    path: Path, schema_name: str, *, source: str | None = None, max_bytes: int = MAX_DOCUMENT_BYTES
) -> dict[str, Any]:
    """Load ``path`` and validate it against ``schema_name``; raise InvalidDocument with all."""
    name = source if source is not None else str(path)
    document = load_yaml_file(path, source=name, max_bytes=max_bytes)
    validate(document, schema_name, source=name)
    return document


def validate(document: object, schema_name: str, *, source: str) -> None:
    """Raise InvalidDocument listing every problem of ``document``; return when it is valid."""
    problems = problems_in(document, schema_name, source=source)
    if problems:
        raise InvalidDocument(problems)


def problems_in(document: object, schema_name: str, *, source: str) -> list[Problem]:
    """Every way ``document`` breaks schema ``schema_name``, sorted by JSON path then rule."""
    errors = sorted(_validator(schema_name).iter_errors(document), key=error_sort_key)
    return [problem for error in errors for problem in describe_error(error, source=source)]


def load_schema(schema_name: str) -> Mapping[str, Any]:
    """The parsed JSON Schema ``schemas/<schema_name>.schema.json`` (cached, do not mutate)."""
    return _schema(schema_name)


def dump_yaml(document: Mapping[str, Any]) -> str:
    """YAML text for ``document``: keys in their order, Unicode kept, no anchors or aliases."""
    plain = _plain(document)
    return yaml.dump(plain, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)


@functools.cache
def _schema(schema_name: str) -> dict[str, Any]:
    if schema_name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {schema_name!r}; expected one of {SCHEMA_NAMES}")
    text = resources.files("ptm.schemas").joinpath(f"{schema_name}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _validator(schema_name: str) -> Draft202012Validator:
    schema = _schema(schema_name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _read_regular_file(path: Path, *, source: str, max_bytes: int) -> bytes:
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise _file_problem(source, "exists", "file not found") from None
    except OSError as exc:
        raise _file_problem(source, "readable", f"cannot read: {exc.strerror}") from exc
    _check_file_info(info, source=source, max_bytes=max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:  # ELOOP when a symlink appeared after the lstat
        raise _file_problem(source, "regular-file", f"cannot open: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as stream:
        _check_file_info(os.fstat(stream.fileno()), source=source, max_bytes=max_bytes)
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after the check
        _refuse_size(source, len(data), max_bytes)
    return data


def _check_file_info(info: os.stat_result, *, source: str, max_bytes: int) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise _file_problem(source, "symlink", "is a symbolic link; only regular files are read")
    if not stat.S_ISREG(info.st_mode):
        raise _file_problem(source, "regular-file", "is not a regular file")
    if info.st_size > max_bytes:
        _refuse_size(source, info.st_size, max_bytes)


def _refuse_size(source: str, size: int, max_bytes: int, *, unit: str = "bytes") -> None:
    shown = f"{size} bytes ({human_bytes(size)})" if unit == "bytes" else f"{size} {unit}"
    message = f"is {shown} long; at most {max_bytes} bytes ({human_bytes(max_bytes)}) are allowed"
    raise _file_problem(source, "max-bytes", message)


def _file_problem(source: str, rule: str, message: str) -> InvalidDocument:
    return InvalidDocument([Problem(source, FILE_PATH, rule, message)])


def _decode(data: bytes, *, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        message = f"invalid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        raise InvalidDocument([Problem(source, f"line {line}", "utf-8", message)]) from None


def _parse(text: str, *, source: str) -> dict[str, Any]:
    try:
        loader = StrictLoader(text)  # the reader refuses control characters right here
        try:
            document = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise InvalidDocument([_yaml_problem(exc, text, source)]) from None
    if not isinstance(document, dict):
        found = "an empty document" if document is None else f"a {type(document).__name__}"
        message = f"the document must be a mapping of keys to values, found {found}"
        raise InvalidDocument([Problem(source, TOP_LEVEL, "type", message)])
    return document


def _yaml_problem(exc: yaml.YAMLError, text: str, source: str) -> Problem:
    rule = exc.rule if isinstance(exc, YamlRuleBroken) else "yaml-syntax"
    if isinstance(exc, yaml.reader.ReaderError):  # a control character, a lone surrogate
        line = text[: exc.position].count("\n") + 1
        return Problem(source, f"line {line}", "yaml-character", str(exc).splitlines()[0])
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else TOP_LEVEL
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    message = "; ".join(part for part in parts if part) or str(exc)
    return Problem(source, where, rule, message)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _plain(value: Any) -> Any:
    """Deep copy of ``value`` with read-only mappings and tuples turned into dicts and lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


# -- reading YAML ------------------------------------------------------------------------------


class YamlRuleBroken(yaml.MarkedYAMLError):
    """A document used a YAML feature ptm refuses; ``rule`` names which."""

    def __init__(self, rule: str, problem: str, mark: Any) -> None:  # Mark: pure or C flavour
        super().__init__(problem=problem, problem_mark=mark)
        self.rule = rule


_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases, tags, merge keys, timestamps, duplicate or non-string keys."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def get_single_node(self) -> yaml.Node | None:
        try:
            return super().get_single_node()
        except yaml.composer.ComposerError as exc:
            if exc.context != "expected a single document in the stream":
                raise
            message = "a file holds one YAML document, but another one starts here"
            raise YamlRuleBroken("multi-document", message, exc.problem_mark) from None

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in stubs
        mark, tag = event.start_mark, getattr(event, "tag", None)
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise YamlRuleBroken("yaml-alias", "YAML anchors and aliases are not allowed", mark)
        if tag is not None:
            raise YamlRuleBroken("yaml-tag", f"YAML tags are not allowed (found {tag!r})", mark)
        if self._depth >= MAX_DEPTH:
            raise YamlRuleBroken("max-depth", f"nested more than {MAX_DEPTH} levels deep", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping: dict[Any, Any] = {}
        first_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            mark = key_node.start_mark
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlRuleBroken("merge-key", "YAML merge keys (<<) are not allowed", mark)
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                raise YamlRuleBroken("key-type", f"keys must be text, found {_describe(key)}", mark)
            if key in first_lines:
                message = f"duplicate key {_short(key)} (first at line {first_lines[key]})"
                raise YamlRuleBroken("duplicate-key", message, mark)
            first_lines[key] = mark.line + 1
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping

    def construct_finite_float(self, node: yaml.ScalarNode) -> float:
        value = self.construct_yaml_float(node)
        if not math.isfinite(value):  # .nan passes every minimum/maximum check
            message = f"{_short(node.value)} is not a finite number"
            raise YamlRuleBroken("yaml-number", message, node.start_mark)
        return value

    def construct_bounded_int(self, node: yaml.ScalarNode) -> int:
        try:
            return self.construct_yaml_int(node)
        except ValueError:  # Python refuses to convert integers of more than 4300 digits
            message = "integer has too many digits"
            raise YamlRuleBroken("yaml-number", message, node.start_mark) from None


StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_finite_float)
StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_bounded_int)


# -- describing schema errors ------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TYPE_NAMES = {"string": "text", "integer": "a whole number", "number": "a number"}
_TYPE_NAMES |= {"object": "a mapping", "array": "a list", "boolean": "true or false"}


def render_path(parts: Iterable[str | int]) -> str:
    """``resources.memory``, ``sites[1]``, ``environment['a b']``; ``(top level)`` for the root."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{_short(part)}]"
    return text or TOP_LEVEL


def error_sort_key(error: ValidationError) -> tuple[Any, ...]:
    parts = tuple((0, part) if isinstance(part, int) else (1, part) for part in error.absolute_path)
    return (parts, str(error.validator), error.message)


def describe_error(error: ValidationError, *, source: str) -> list[Problem]:
    """One Problem per broken rule (one per unknown key for ``additionalProperties``)."""
    path = render_path(error.absolute_path)
    rule = str(error.validator)
    instance, schema = error.instance, error.schema
    if rule == "additionalProperties" and isinstance(instance, dict) and isinstance(schema, dict):
        return [Problem(source, path, rule, text) for text in _unknown_keys(instance, schema)]
    if rule == "required" and isinstance(instance, dict):
        return [Problem(source, path, rule, _required_message(error, instance))]
    return [Problem(source, path, rule, _message(error))]


def _unknown_keys(instance: dict[str, Any], schema: Mapping[str, Any]) -> list[str]:
    known = list(schema.get("properties", {}))
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    messages = []
    for key in instance:
        if key in known or any(p.search(key) for p in patterns):
            continue
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        messages.append(f"unknown key {_short(key)}{hint}")
    return messages


def _message(error: ValidationError) -> str:
    text = _rule_message(error)
    return f"key {text}" if "propertyNames" in error.schema_path else text


def _rule_message(error: ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    # a rule that only applies conditionally (if/then) explains itself in its description
    if "then" in error.schema_path and "description" in schema:
        return str(schema["description"])
    if error.validator == "pattern":
        return _pattern_message(error.instance, str(error.validator_value), schema)
    if error.validator in _BOUNDS and _is_number(error.instance):
        return _bound_message(str(error.validator), error.instance, error.validator_value, schema)
    describe = _MESSAGES.get(str(error.validator))
    return describe(error.instance, error.validator_value) if describe else error.message[:300]


def _pattern_message(value: Any, pattern: str, schema: Mapping[str, Any]) -> str:
    """What a value must look like, in words: a regex tells most people nothing."""
    accepted = ACCEPTED_FORMS.get(pattern)
    if accepted is not None:
        return f"{_short(value)}: {accepted}"
    if "description" in schema:
        return f"{_short(value)} does not have the expected form: {schema['description']}"
    return f"{_short(value)} does not match {pattern}"


_BOUNDS = {
    "minimum": "must be at least",
    "maximum": "must be at most",
    "exclusiveMinimum": "must be greater than",
    "exclusiveMaximum": "must be less than",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bound_message(rule: str, value: Any, limit: Any, schema: Mapping[str, Any]) -> str:
    description = str(schema.get("description", "")).lower()
    if "second" in description and isinstance(limit, int) and limit >= 60:
        shown = f"{limit} seconds ({human_seconds(limit)})"
    elif "bytes" in description and isinstance(limit, int) and limit >= 1024:
        shown = f"{limit} bytes ({human_bytes(limit)})"
    else:
        shown = str(limit)
    return f"{_BOUNDS[rule]} {shown}, found {_short(value)}"


def human_bytes(size: int) -> str:
    """``1048576`` → ``1 MiB``, ``1536`` → ``1.5 KiB``; binary units like ptm's ``512m``."""
    value, unit = float(size), "bytes"
    for name in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, name
    return f"{size} bytes" if unit == "bytes" else f"{value:.4g} {unit}"


def human_seconds(seconds: int) -> str:
    """``604800`` → ``7 days``, ``5400`` → ``1.5 hours``, ``90`` → ``1.5 minutes``."""
    for name, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            amount = seconds / length
            shown = f"{amount:.3g}"
            return f"{shown} {name}" + ("" if shown == "1" else "s")
    return f"{seconds} second" + ("" if seconds == 1 else "s")


_NAME_FORM = "a-z, 0-9, '.', '_', '-'; at most 63, the first a letter or digit"
# What each schema pattern accepts, in words, keyed by the pattern exactly as the schemas say it
# (tests/test_schema.py checks that every pattern is explained here or by its description).
ACCEPTED_FORMS: dict[str, str] = {
    r"^[1-9][0-9]{0,14}[kKmMgG]?(?!\n)$": (
        "use a number with an optional unit k, m or g, like 512m"
    ),
    r"^[a-z0-9][a-z0-9._-]{0,62}(?!\n)$": f"use a name like hospital-a ({_NAME_FORM})",
    r"^(?:\*|[a-z0-9][a-z0-9._-]{0,62})(?!\n)$": (
        f"use a site name like hospital-a ({_NAME_FORM}), or '*' for every site"
    ),
    r"^(?![-/.])(?!.*(?:\.\.|//|/\.|@\{|\.lock(?:/|$)|/$|\.$))[A-Za-z0-9._/-]{1,100}(?!\n)$": (
        "use a branch name of up to 100 of A-Z, a-z, 0-9, '.', '_', '/' and '-', not starting "
        "with '-', '/' or '.', without '..' or '//', not ending in '/', '.' or '.lock', like main"
    ),
    r"^[^\u0000]*$": "must not contain NUL characters",
    r"^[^\u0000\n\r]*(?!\n)$": "must be one line, without NUL characters",
    r"^[^\u0000-\u001f]*(?!\n)$": "must be one line, without control characters",
    r"^[^\u0000-\u001f\u007f]*(?!\n)$": "must be one line, without control characters",
    r"^(?!-)[^\u0000\n\r]*(?!\n)$": (
        "use a path or URL on one line that does not start with '-', "
        "like ssh://git@git.example.org/registry.git"
    ),
    r"^[a-z0-9@.-]+ [^\s]+(?: [^\n\r]*)?(?!\n)$": (
        "use a public key line, key type then key, like 'ssh-ed25519 AAAAC3Nza…'"
    ),
    r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}(?!\n)$": (
        "use a host name or address, like ttp.example.org or 192.0.2.7"
    ),
    r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}(?!\n)$": (
        "use an account name of 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-', like hospital-a"
    ),
    r"^[^\s,]{1,256}(?!\n)$": (
        "use a principal without spaces or commas, as in allowed_signers, like alice@uni.example"
    ),
    r"^(?:unix|tcp|ssh|npipe)://[^\s]+(?!\n)$": (
        "use an engine address starting with unix://, tcp://, ssh:// or npipe://, "
        "like unix:///var/run/docker.sock"
    ),
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(?!\n)$": (
        "use a network name of A-Z, a-z, 0-9, '_', '.' and '-', like ptm-data"
    ),
    r"^[0-9]{1,10}(?::[0-9]{1,10})?(?!\n)$": (
        "use a numeric uid or uid:gid, like 65534 or 1000:1000"
    ),
    r"^(?!PTM_)[A-Za-z_][A-Za-z0-9_]*(?!\n)$": (
        "use a variable name of A-Z, a-z, 0-9 and '_', not starting with a digit or PTM_, "
        "like SPARQL_ENDPOINT"
    ),
    r"^/[^\u0000\n\r:]*(?!\n)$": "use an absolute path without ':' or line breaks, like /data",
    r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]{0,252}):[0-9]{1,5}(?!\n)$": (
        "use HOST:PORT, like 127.0.0.1:2222 or [::1]:2222"
    ),
    r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]{1,9})?Z(?!\n)$": (
        "use a UTC time, like 2026-11-29T10:00:00Z"
    ),
    r"^(?:(?!\.\.?/)[^/\u0000-\u001f\u007f]+/)*(?!\.\.?(?!\n)$)[^/\u0000-\u001f\u007f]+(?!\n)$": (
        "use a relative path of names separated by '/', without '.', '..' or control "
        "characters, like output/summary.csv"
    ),
    r'^[^\s"]+(?!\n)$': "use a principal without spaces or quotes, like ptm-agent@hospital-a",
    r"^[0-9a-f]{40}(?:[0-9a-f]{24})?(?!\n)$": "use a full commit id: 40 or 64 of 0-9 and a-f",
    r"^sha256:[0-9a-f]{64}(?!\n)$": "use sha256: and 64 of 0-9 and a-f",
    r"^[^@\s]+@sha256:[0-9a-f]{64}(?!\n)$": "use name@sha256: and 64 of 0-9 and a-f",
    r"^[0-9a-f]{64}(?!\n)$": "use 64 of 0-9 and a-f",
}


def _required_message(error: ValidationError, instance: dict[str, Any]) -> str:
    required: list[str] = list(error.validator_value)  # type: ignore[arg-type]  # Unset: never here
    missing = [name for name in required if name not in instance]
    # jsonschema reports each missing key as its own error, whose message starts with its repr
    name = next((n for n in missing if error.message.startswith(repr(n))), missing[0])
    return f"missing required key {_short(name)}"


def _type(instance: Any, expected: Any) -> str:
    names = [expected] if isinstance(expected, str) else list(expected)
    wanted = " or ".join(_TYPE_NAMES.get(name, name) for name in names)
    return f"must be {wanted}, found {_describe(instance)}"


def _duplicate(instance: Any, _: Any) -> str:
    seen: list[Any] = []
    for item in instance:
        if item in seen:
            return f"{_short(item)} is listed more than once"
        seen.append(item)
    return "has duplicate entries"


def _too_short(instance: Any, limit: Any) -> str:
    return "must not be empty" if limit == 1 else f"must be at least {limit} characters long"


def _few_items(instance: Any, limit: Any) -> str:
    return "must not be empty" if limit == 1 else f"must have at least {limit} entries"


_MESSAGES: dict[str, Callable[[Any, Any], str]] = {
    "type": _type,
    "uniqueItems": _duplicate,
    "minLength": _too_short,
    "minItems": _few_items,
    "maxLength": lambda value, limit: f"is {len(value)} characters long; at most {limit} allowed",
    "maxItems": lambda value, limit: f"has {len(value)} entries; at most {limit} allowed",
    "const": lambda value, const: f"must be {json.dumps(const)}, found {_short(value)}",
    "enum": lambda value, options: f"{_short(value)} is not one of {', '.join(map(repr, options))}",
}


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float, str)):
        return f"{'the text' if isinstance(value, str) else 'the number'} {_short(value)}"
    return {type(None): "null", dict: "a mapping", list: "a list"}.get(type(value), "a value")


def _short(value: Any, limit: int = 80) -> str:
    """repr() cut to ``limit`` characters: hostile values can be long or hold control bytes."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
