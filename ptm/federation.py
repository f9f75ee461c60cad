"""The federation as one registry shows it: tasks on the tasks branch, results on ``results/*``.

Reading is built for registries with thousands of tasks and dozens of sites, with few git
processes whatever the size: one ``git fetch`` brings the tasks branch and every results branch,
one ``git ls-tree -r`` per results branch lists what a site reported, and one
``git cat-file --batch`` reads all the files needed. For the overview, status and task files are
read by ``quick_fields`` (fast, for flat YAML such as ptm writes), falling back to the strict
loader whenever it is not sure; ``read_task_status`` validates each file in full.

Nothing on a results branch is trusted. A branch whose name is not ``results/<valid site>`` is
ignored and listed; a site speaks only for itself (files on ``results/a`` under
``results/<task>/b/`` are not read); a status that cannot be read shows as ``invalid``, with the
problem, instead of stopping the whole overview; paths are checked before anything is written.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptm.errors import InvalidDocument, PtmError
from ptm.gitrepo import GitRepo
from ptm.ledger import LOG_FILE, OUTPUT_DIR, RESULTS_DIR, STATUS_FILE, result_path
from ptm.names import is_valid_name
from ptm.schema import StrictLoader, load_yaml_text
from ptm.status import FINAL_STATES, STATES, StatusRecord
from ptm.task import CANCEL_FILE, EVERY_SITE, TASK_FILE, TASKS_DIR, Cancellation, Task

WAITING = "waiting"  # a site the task names has not reported anything yet
INVALID = "invalid"  # a site's status.yaml could not be read or broke the schema
MAX_STATUS_BYTES = 256 * 1024
LIST_WORKERS = 8


# -- where things are --------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryRefs:
    """The local refs that mirror a registry's branches (``refs/remotes/<remote>/…``)."""

    remote: str
    tasks_branch: str

    @property
    def tasks_ref(self) -> str:
        return f"refs/remotes/{self.remote}/{self.tasks_branch}"

    @property
    def results_ref_prefix(self) -> str:
        return f"refs/remotes/{self.remote}/{RESULTS_DIR}/"

    def results_ref(self, site: str) -> str:
        return self.results_ref_prefix + site

    def refspecs(self) -> tuple[str, str]:
        return (
            f"+refs/heads/{self.tasks_branch}:{self.tasks_ref}",
            f"+refs/heads/{RESULTS_DIR}/*:{self.results_ref_prefix}*",
        )


def fetch(repo: GitRepo, refs: RegistryRefs) -> None:
    """Bring the tasks branch and every results branch up to date, in one ``git fetch``."""
    repo.run("fetch", "--quiet", "--prune", "--no-tags", refs.remote, *refs.refspecs())


@dataclass(frozen=True)
class ResultBranches:
    """The results branches present locally: valid site → ref, and names that were ignored."""

    refs: Mapping[str, str]
    ignored: tuple[str, ...]


def result_branches(repo: GitRepo, refs: RegistryRefs) -> ResultBranches:
    out = repo.run("for-each-ref", "--format=%(refname)", refs.results_ref_prefix)
    found: dict[str, str] = {}
    ignored: list[str] = []
    for ref in out.splitlines():
        site = ref.removeprefix(refs.results_ref_prefix)
        if is_valid_name(site):
            found[site] = ref
        else:
            ignored.append(f"{RESULTS_DIR}/{site}")
    return ResultBranches(dict(sorted(found.items())), tuple(sorted(ignored)))


# -- git plumbing: tree listings and batched reads ---------------------------------------------


@dataclass(frozen=True)
class TreeEntry:
    """One line of ``git ls-tree -r -z``; the path is as the branch has it (untrusted)."""

    mode: str
    kind: str
    oid: str
    path: str

    @property
    def is_regular_file(self) -> bool:
        return self.kind == "blob" and self.mode in ("100644", "100755")


def parse_tree_listing(output: bytes) -> list[TreeEntry]:
    entries = []
    for record in output.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        mode, kind, oid = meta.decode("ascii").split(" ")
        entries.append(TreeEntry(mode, kind, oid, path.decode("utf-8", "surrogateescape")))
    return entries


def list_tree(repo: GitRepo, rev: str, under: str) -> list[TreeEntry]:
    return parse_tree_listing(repo.run_bytes("ls-tree", "-r", "-z", rev, "--", under))


def list_trees(repo: GitRepo, revs: Sequence[str], under: str) -> list[list[TreeEntry]]:
    """``list_tree`` for many revisions, a few git processes at a time."""
    if len(revs) <= 1:
        return [list_tree(repo, rev, under) for rev in revs]
    with ThreadPoolExecutor(max_workers=min(LIST_WORKERS, len(revs))) as pool:
        return list(pool.map(lambda rev: list_tree(repo, rev, under), revs))


@dataclass(frozen=True)
class GitObject:
    kind: str
    data: bytes


def parse_batch_output(output: bytes, count: int) -> list[GitObject | None]:
    """Split ``git cat-file --batch`` output for ``count`` requests; None for missing ones."""
    objects: list[GitObject | None] = []
    position = 0
    for _ in range(count):
        end = output.index(b"\n", position)
        header = output[position:end]
        position = end + 1
        if header.endswith((b" missing", b" ambiguous")):
            objects.append(None)
            continue
        _, kind, size = header.decode("ascii").split(" ")
        objects.append(GitObject(kind, output[position : position + int(size)]))
        position += int(size) + 1
    return objects


def read_objects(repo: GitRepo, specs: Sequence[str]) -> list[GitObject | None]:
    """Read many objects (``<oid>`` or ``<rev>:<path>``) with one ``git cat-file --batch``."""
    if not specs:
        return []
    if any("\n" in spec for spec in specs):
        raise ValueError("object names must not contain newlines")
    request = "".join(f"{spec}\n" for spec in specs).encode("utf-8", "surrogateescape")
    return parse_batch_output(repo.run_with_input("cat-file", "--batch", stdin=request), len(specs))


def read_blobs(repo: GitRepo, specs: Sequence[str]) -> list[bytes | None]:
    return [obj.data if obj and obj.kind == "blob" else None for obj in read_objects(repo, specs)]


# -- fast reading of flat YAML -----------------------------------------------------------------


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
    if len(data) <= MAX_STATUS_BYTES:
        try:
            fields = quick_fields(data.decode("utf-8"), wanted)
        except UnicodeDecodeError:
            fields = None
        if fields is not None:
            return fields
    document = load_yaml_text(data, source=source, max_bytes=MAX_STATUS_BYTES)
    return {key: document[key] for key in wanted if key in document}


# -- the overview: every task, every site ------------------------------------------------------


@dataclass(frozen=True)
class SiteState:
    """Where one task stands at one site, as the overview shows it."""

    site: str
    state: str  # a status.yaml state, WAITING or INVALID
    reason: str | None  # the site's reason; for INVALID, what is wrong with its status.yaml

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class TaskOverview:
    task_id: str
    sites_requested: tuple[str, ...]  # names, or ("*",); () when task.yaml could not be read
    cancelled: bool
    problem: str | None  # why task.yaml could not be read, or that it is missing
    sites: tuple[SiteState, ...]


@dataclass(frozen=True)
class Overview:
    tasks: tuple[TaskOverview, ...]
    sites: tuple[str, ...]  # every site with a results branch
    ignored_branches: tuple[str, ...]  # results/* branches whose name is not a valid site


@dataclass(frozen=True)
class _TaskFiles:
    task_oid: str | None = None
    cancel_oid: str | None = None


@dataclass(frozen=True)
class _TaskHead:
    sites: tuple[str, ...]
    problem: str | None


def read_overview(repo: GitRepo, refs: RegistryRefs, *, memo_file: Path | None = None) -> Overview:
    """Every task on the tasks branch and every report on the results branches (no fetch).

    ``memo_file`` keeps what was read of each file, by blob id, between runs: a file's blob id
    changes with its content, so only files that changed since the last run are read again.
    """
    task_files = _task_files(repo, refs)
    branches = result_branches(repo, refs)
    reports = _status_blobs(repo, branches)
    needed = {files.task_oid for files in task_files.values() if files.task_oid}
    needed.update(reports.values())
    readings = _readings(repo, needed, memo_file)
    heads = {
        task_id: _task_head(task_id, readings.get(files.task_oid or ""), refs)
        for task_id, files in task_files.items()
    }
    by_task: dict[str, list[SiteState]] = {}
    for (task_id, site), oid in reports.items():
        by_task.setdefault(task_id, []).append(_site_state(task_id, site, readings.get(oid)))
    task_ids = sorted(set(task_files) | set(by_task))
    rows = tuple(
        _overview_row(t, heads.get(t), task_files.get(t), by_task.get(t, []), refs)
        for t in task_ids
    )
    return Overview(rows, tuple(branches.refs), branches.ignored)


# What the overview reads of every task.yaml and status.yaml: {"fields": {…}} or {"problem": "…"}.
Reading = Mapping[str, Any]
READ_KEYS = ("ptm", "task", "site", "state", "reason", "sites")
MEMO_FORMAT = 1  # raise when the way files are read changes: older memos are then ignored


def _readings(repo: GitRepo, oids: set[str], memo_file: Path | None) -> dict[str, Reading]:
    memo = _load_memo(memo_file)
    missing = sorted(oids - set(memo))
    for oid, data in zip(missing, read_blobs(repo, missing), strict=True):
        memo[oid] = read_file_fields(data)
    readings = {oid: memo[oid] for oid in oids}
    if memo_file is not None and (missing or len(memo) != len(readings)):
        _save_memo(memo_file, readings)  # keeps only what is still in use
    return readings


def read_file_fields(data: bytes | None) -> Reading:
    """The READ_KEYS of one file, or the problem (without the file's name) that stopped it."""
    if data is None:
        return {"problem": "could not be read"}
    try:
        return {"fields": read_flat_fields(data, READ_KEYS, source="")}
    except InvalidDocument as exc:
        first = exc.problems[0]
        return {"problem": f"{first.path}: {first.message} [{first.rule}]"}


def _load_memo(path: Path | None) -> dict[str, Reading]:
    if path is None:
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: start afresh
    if not isinstance(document, dict) or document.get("format") != MEMO_FORMAT:
        return {}
    entries = document.get("readings")
    if not isinstance(entries, dict):
        return {}
    return {oid: reading for oid, reading in entries.items() if isinstance(reading, dict)}


def _save_memo(path: Path, readings: Mapping[str, Reading]) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    document = {"format": MEMO_FORMAT, "readings": readings}
    try:
        partial.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
        partial.replace(path)
    except OSError:  # a read-only clone: no memo, just slower next time
        partial.unlink(missing_ok=True)


def memo_file_for(root: Path) -> Path | None:
    """Where the overview keeps its memo in the clone at ``root`` (None if it cannot)."""
    git_dir = root / ".git"
    return git_dir / "ptm-overview-memo.json" if git_dir.is_dir() else None


def _task_files(repo: GitRepo, refs: RegistryRefs) -> dict[str, _TaskFiles]:
    if repo.rev_parse(refs.tasks_ref) is None:
        raise PtmError(
            f"no branch {refs.tasks_branch!r} at {refs.remote}: is this a ptm registry, and is "
            "the right tasks branch set in registry.yaml?"
        )
    found: dict[str, dict[str, str]] = {}
    for entry in list_tree(repo, refs.tasks_ref, f"{TASKS_DIR}/"):
        parts = entry.path.split("/")
        if len(parts) == 3 and is_valid_name(parts[1]) and entry.kind == "blob":
            found.setdefault(parts[1], {})[parts[2]] = entry.oid
    return {
        task_id: _TaskFiles(files.get(TASK_FILE), files.get(CANCEL_FILE))
        for task_id, files in sorted(found.items())
        if TASK_FILE in files
    }


def _status_blobs(repo: GitRepo, branches: ResultBranches) -> dict[tuple[str, str], str]:
    """(task, site) → blob id of ``results/<task>/<site>/status.yaml`` on ``results/<site>``."""
    sites = list(branches.refs)
    listings = list_trees(repo, [branches.refs[s] for s in sites], f"{RESULTS_DIR}/")
    found: dict[tuple[str, str], str] = {}
    for site, entries in zip(sites, listings, strict=True):
        for entry in entries:
            parts = entry.path.split("/")
            if (
                len(parts) == 4
                and parts[2] == site
                and parts[3] == STATUS_FILE
                and is_valid_name(parts[1])
                and entry.kind == "blob"
            ):
                found[(parts[1], site)] = entry.oid
    return found


def _task_head(task_id: str, reading: Reading | None, refs: RegistryRefs) -> _TaskHead:
    source = f"{refs.tasks_branch}:{TASKS_DIR}/{task_id}/{TASK_FILE}"
    if reading is None or "fields" not in reading:
        problem = reading.get("problem") if reading else "could not be read"
        return _TaskHead((), f"{source}: {problem}")
    sites = reading["fields"].get("sites")
    if not isinstance(sites, list) or not sites:
        return _TaskHead((), f"{source}: sites: must be a list of site names")
    if not all(s == EVERY_SITE or is_valid_name(s) for s in sites):
        return _TaskHead((), f"{source}: sites: holds something that is not a site name")
    return _TaskHead(tuple(sites), None)


def _site_state(task_id: str, site: str, reading: Reading | None) -> SiteState:
    source = f"{RESULTS_DIR}/{site}:{result_path(task_id, site)}/{STATUS_FILE}"
    if reading is None or "fields" not in reading:
        problem = reading.get("problem") if reading else "could not be read"
        return SiteState(site, INVALID, f"{source}: {problem}")
    fields = reading["fields"]
    problem = _summary_problem(fields, task_id, site)
    if problem is not None:
        return SiteState(site, INVALID, f"{source}: {problem}")
    return SiteState(site, str(fields["state"]), fields.get("reason"))


def _summary_problem(fields: Mapping[str, Any], task_id: str, site: str) -> str | None:
    if fields.get("ptm") != 1:
        return "ptm: must be 1"
    if fields.get("task") != task_id or fields.get("site") != site:
        return f"task and site must be {task_id!r} and {site!r} (the folder it is in)"
    if fields.get("state") not in STATES:
        return f"state: {str(fields.get('state'))[:40]!r} is not a known state"
    if not isinstance(fields.get("reason"), (str, type(None))):
        return "reason: must be text or null"
    return None


def _overview_row(
    task_id: str,
    head: _TaskHead | None,
    files: _TaskFiles | None,
    states: list[SiteState],
    refs: RegistryRefs,
) -> TaskOverview:
    reported = {state.site: state for state in states}
    if head is None:
        head = _TaskHead((), f"no {TASKS_DIR}/{task_id}/{TASK_FILE} on {refs.tasks_branch}")
    expected = [s for s in head.sites if s != EVERY_SITE and s not in reported]
    waiting = [SiteState(site, WAITING, None) for site in expected]
    sites = tuple(sorted([*reported.values(), *waiting], key=lambda s: s.site))
    cancelled = files is not None and files.cancel_oid is not None
    return TaskOverview(task_id, head.sites, cancelled, head.problem, sites)


def _first_problem(exc: InvalidDocument) -> str:
    return str(exc.problems[0]) if exc.problems else str(exc)


# -- one task in detail ------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteStatus:
    """One site's full, validated status for a task; ``record`` is None for waiting/invalid."""

    site: str
    state: str  # a status.yaml state, WAITING or INVALID
    record: StatusRecord | None
    problem: str | None = None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def reason(self) -> str | None:
        return self.record.reason if self.record is not None else self.problem


@dataclass(frozen=True)
class TaskStatus:
    """A task and every site's status for it. ``task`` is None when task.yaml is unreadable."""

    task_id: str
    task: Task | None
    problem: str | None
    cancellation: Cancellation | None
    sites: tuple[SiteStatus, ...]

    @property
    def sites_requested(self) -> tuple[str, ...]:
        return self.task.sites if self.task is not None else ()

    def site(self, name: str) -> SiteStatus | None:
        return next((s for s in self.sites if s.site == name), None)

    def targets(self, only: Sequence[str] = ()) -> tuple[str, ...]:
        """The sites to wait for: ``only`` if given, else the named sites, else those that
        reported (a ``*`` task has no list of sites to wait for)."""
        if only:
            return tuple(sorted(set(only)))
        named = [s for s in self.sites_requested if s != EVERY_SITE]
        if named and EVERY_SITE not in self.sites_requested:
            return tuple(sorted(set(named)))
        return tuple(s.site for s in self.sites if s.state != WAITING)

    def unfinished(self, only: Sequence[str] = ()) -> tuple[SiteStatus, ...]:
        result = []
        for name in self.targets(only):
            status = self.site(name) or SiteStatus(name, WAITING, None)
            if not status.is_final:
                result.append(status)
        return tuple(result)

    def is_done(self, only: Sequence[str] = ()) -> bool:
        """True when every targeted site reached a final state (and there is one at least)."""
        return bool(self.targets(only)) and not self.unfinished(only)


def read_task_status(repo: GitRepo, refs: RegistryRefs, task_id: str) -> TaskStatus:
    """One task from the local refs (no fetch); PtmError when the registry knows nothing of it."""
    if not is_valid_name(task_id):
        raise PtmError(f"{task_id!r} is not a valid task id")
    branches = result_branches(repo, refs)
    task_dir = f"{TASKS_DIR}/{task_id}"
    specs = [
        f"{refs.tasks_ref}:{task_dir}/{TASK_FILE}",
        f"{refs.tasks_ref}:{task_dir}/{CANCEL_FILE}",
    ]
    specs += [
        f"{ref}:{result_path(task_id, site)}/{STATUS_FILE}" for site, ref in branches.refs.items()
    ]
    task_data, cancel_data, *status_data = read_blobs(repo, specs)
    reported = [
        _full_site_status(task_id, site, data)
        for site, data in zip(branches.refs, status_data, strict=True)
        if data is not None
    ]
    if task_data is None and not reported:
        raise PtmError(f"no task {task_id!r} in the registry (branch {refs.tasks_branch})")
    task, problem = _load_task(task_id, task_data, refs)
    names = {s.site for s in reported}
    named = [s for s in (task.sites if task else ()) if s != EVERY_SITE and s not in names]
    waiting = [SiteStatus(site, WAITING, None) for site in named]
    sites = tuple(sorted([*reported, *waiting], key=lambda s: s.site))
    return TaskStatus(task_id, task, problem, _load_cancel(task_id, cancel_data, refs), sites)


def _load_task(
    task_id: str, data: bytes | None, refs: RegistryRefs
) -> tuple[Task | None, str | None]:
    source = f"{refs.tasks_branch}:{TASKS_DIR}/{task_id}/{TASK_FILE}"
    if data is None:
        return None, f"no {source}"
    try:
        return Task.from_document(task_id, load_yaml_text(data, source=source), source=source), None
    except InvalidDocument as exc:
        return None, str(exc)


def _load_cancel(task_id: str, data: bytes | None, refs: RegistryRefs) -> Cancellation | None:
    if data is None:
        return None
    source = f"{refs.tasks_branch}:{TASKS_DIR}/{task_id}/{CANCEL_FILE}"
    try:
        document = load_yaml_text(data, source=source)
    except InvalidDocument:
        return Cancellation(task_id, "(cancel.yaml could not be read)")
    reason = document.get("reason")
    requested_by = document.get("requested_by")
    return Cancellation(
        task_id,
        reason if isinstance(reason, str) else "(no reason given)",
        requested_by if isinstance(requested_by, str) else None,
    )


def _full_site_status(task_id: str, site: str, data: bytes) -> SiteStatus:
    source = f"{RESULTS_DIR}/{site}:{result_path(task_id, site)}/{STATUS_FILE}"
    try:
        document = load_yaml_text(data, source=source, max_bytes=MAX_STATUS_BYTES)
        record = StatusRecord.from_document(document, source=source)
    except InvalidDocument as exc:
        return SiteStatus(site, INVALID, None, _first_problem(exc))
    if record.task != task_id or record.site != site:
        message = f"{source}: names task {record.task!r} at site {record.site!r}"
        return SiteStatus(site, INVALID, None, message)
    return SiteStatus(site, record.state, record)


# -- collecting result files -------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_safe_relative_path(path: str) -> bool:
    """True for ``a/b/c`` paths: no empty, ``.`` or ``..`` part, no control characters."""
    if not path or path.startswith("/") or len(path) > 4096:
        return False
    return all(
        part not in ("", ".", "..") and not _CONTROL.search(part) and len(part.encode()) <= 255
        for part in path.split("/")
    )


@dataclass(frozen=True)
class CollectedSite:
    """What ``collect_results`` wrote for one site: ``folder/<file>`` for each of ``files``."""

    site: str
    state: str
    folder: Path
    files: tuple[str, ...]  # status.yaml, log.txt, output/… (relative to folder)
    refused: tuple[str, ...]  # paths on the branch that were not written, and why


def collect_results(
    repo: GitRepo,
    refs: RegistryRefs,
    status: TaskStatus,
    out_dir: Path,
    *,
    sites: Sequence[str] = (),
) -> dict[str, CollectedSite]:
    """Copy each reporting site's status.yaml, log.txt and output/ into ``out_dir/<site>/``."""
    reporting = [s for s in status.sites if s.state != WAITING and (not sites or s.site in sites)]
    names = [s.site for s in reporting]
    for name in names:  # TaskStatus only holds valid names; checked again as this writes
        if not is_valid_name(name):
            raise PtmError(f"{name!r} is not a valid site name; refusing to write it")
    listings = list_trees(
        repo, [refs.results_ref(n) for n in names], f"{RESULTS_DIR}/{status.task_id}/"
    )
    plans = [
        _plan_site(status.task_id, site, entries)
        for site, entries in zip(names, listings, strict=True)
    ]
    oids = [oid for wanted, _ in plans for oid in wanted.values()]
    contents = dict(zip(oids, read_blobs(repo, oids), strict=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    collected = {}
    for site_status, (wanted, refused) in zip(reporting, plans, strict=True):
        files = {path: contents.get(oid) or b"" for path, oid in wanted.items()}
        folder = _write_site_folder(out_dir, site_status.site, files)
        collected[site_status.site] = CollectedSite(
            site_status.site, site_status.state, folder, tuple(sorted(files)), refused
        )
    return collected


def _plan_site(
    task_id: str, site: str, entries: list[TreeEntry]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """(relative path → blob id to write, refused paths with the reason) for one site."""
    prefix = f"{result_path(task_id, site)}/"
    wanted: dict[str, str] = {}
    refused: list[str] = []
    for entry in entries:
        if not entry.path.startswith(prefix):
            continue
        relative = entry.path[len(prefix) :]
        if not (relative in (STATUS_FILE, LOG_FILE) or relative.startswith(f"{OUTPUT_DIR}/")):
            continue
        if not is_safe_relative_path(relative):
            refused.append(f"{entry.path!r}: unsafe path")
        elif not entry.is_regular_file:
            refused.append(f"{entry.path!r}: not a regular file (mode {entry.mode})")
        else:
            wanted[relative] = entry.oid
    return wanted, tuple(refused)


def _write_site_folder(out_dir: Path, site: str, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` into a fresh folder, then swap it in as ``out_dir/<site>``."""
    final = out_dir / site
    staging = Path(tempfile.mkdtemp(prefix=f".{site}.", suffix=".partial", dir=out_dir))
    try:
        for relative, data in files.items():
            _write_new_file(staging, relative, data)
        _remove_existing(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _write_new_file(root: Path, relative: str, data: bytes) -> None:
    if not is_safe_relative_path(relative):
        raise PtmError(f"refusing to write {relative!r}: unsafe path")
    target = root.joinpath(*relative.split("/"))
    if os.path.commonpath([root, os.path.normpath(target)]) != str(root):
        raise PtmError(f"refusing to write {relative!r}: outside {root}")
    # Every folder below ``root`` is made here, in a folder made moments ago: none is a link.
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(target, flags, 0o644), "wb") as stream:
        stream.write(data)


def _remove_existing(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
