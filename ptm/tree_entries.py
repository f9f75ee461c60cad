"""Raw git tree entries and the checks each must pass, with no git in sight (pure functions).

``parse_tree_object`` splits a raw tree object into its entries, exactly as stored (names are
bytes, so nothing git's path printing might hide), and ``check_folder`` judges one folder's
entries: names valid UTF-8 and none of ``''``, ``.``, ``..``, ``/``, NUL or anything
``ptm.outputs.name_problem`` refuses; modes regular files and folders only (no symlinks, no
gitlinks); no two entries with the same name up to case and Unicode normalisation; entries in
git's order. The values a walk produces (``Entry``, ``TreeProblem``, ``CheckedTree``) and what
a read may cost (``Caps``) live here too; ``ptm.treecheck`` reads the trees from git.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ptm.outputs import name_problem

FILE_MODES = frozenset({b"100644", b"100755"})
TREE_MODE = b"40000"
MODE_NAMES = {b"120000": "a symbolic link", b"160000": "a gitlink (submodule)"}
OID_BYTES = 20  # SHA-1 repositories; SHA-256 ones are refused as unreadable


@dataclass(frozen=True)
class Caps:
    """What one read may cost: entries, depth, and bytes per blob, in all, and per tree object."""

    max_entries: int = 2000
    max_depth: int = 16
    max_blob_bytes: int = 50 * 1024**2
    max_total_bytes: int = 50 * 1024**2
    max_tree_bytes: int = 4 * 1024**2


@dataclass(frozen=True)
class RawEntry:
    """One entry of a raw tree object, exactly as stored (the name is bytes)."""

    mode: bytes
    name: bytes
    oid: str


@dataclass(frozen=True)
class TreeProblem:
    """Why one entry (``path``, as safe text) was refused, with a short rule name."""

    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} [{self.rule}]"


@dataclass(frozen=True)
class Entry:
    """A checked entry: ``path`` is made of checked names joined by ``/``."""

    path: str
    oid: str
    is_dir: bool
    executable: bool = False
    size: int = 0  # blobs only


@dataclass(frozen=True)
class CheckedTree:
    """The entries of one tree that passed every check, and every problem found."""

    oid: str
    entries: tuple[Entry, ...]
    problems: tuple[TreeProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def files(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if not e.is_dir)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def get(self, path: str) -> Entry | None:
        return next((e for e in self.entries if e.path == path), None)

    def under(self, folder: str) -> CheckedTree:
        """The entries below ``folder`` (paths made relative to it)."""
        prefix = f"{folder}/"
        inside = tuple(
            Entry(e.path[len(prefix) :], e.oid, e.is_dir, e.executable, e.size)
            for e in self.entries
            if e.path.startswith(prefix)
        )
        found = self.get(folder)
        return CheckedTree(found.oid if found else "", inside)


# ---- parsing and checking-------------------------------------------------------------


def parse_tree_object(data: bytes) -> list[RawEntry]:
    """Entries of a raw tree object (``<mode> <name>\\0<20-byte id>`` each); ValueError if not."""
    entries = []
    position = 0
    while position < len(data):
        space = data.index(b" ", position)
        nul = data.index(b"\0", space)
        end = nul + 1 + OID_BYTES
        if end > len(data):
            raise ValueError("truncated tree entry")
        mode, name = data[position:space], data[space + 1 : nul]
        entries.append(RawEntry(mode, name, data[nul + 1 : end].hex()))
        position = end
    return entries


def shown_name(name: bytes) -> str:
    """A raw name as a message may print it: quoted, every odd byte escaped."""
    return ascii(name.decode("utf-8", "backslashreplace"))[1:-1] or "''"


def entry_name_problem(name: bytes) -> str | None:
    """Why a tree entry's name is refused, if it is."""
    if not name:
        return "is empty"
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return "is not valid UTF-8"
    if text in (".", ".."):
        return f"is {text!r}"
    if "/" in text or "\0" in text:
        return "holds a '/' or NUL, which no file name can"
    return name_problem(text)


def git_order_key(entry: RawEntry) -> bytes:
    """How git sorts a tree's entries: by name, a folder as if its name ended in ``/``."""
    return entry.name + (b"/" if entry.mode == TREE_MODE else b"")


def in_git_order(raw: Sequence[RawEntry]) -> bool:
    keys = [git_order_key(e) for e in raw]
    return all(a <= b for a, b in itertools.pairwise(keys))


def check_folder(
    raw: Sequence[RawEntry],
) -> tuple[list[tuple[RawEntry, str]], list[tuple[str, str, str]]]:
    """(accepted entries with their names, problems as (name, rule, message)) for one folder."""
    accepted: list[tuple[RawEntry, str]] = []
    problems: list[tuple[str, str, str]] = []
    if not in_git_order(raw):
        # git's own tree walks (diffs, pathspecs, merges) assume this order: a crafted tree
        # out of it could hide a change from the commits a signature check looks at.
        problems.append(("", "order", "its entries are not in git's order (a crafted tree)"))
    seen: dict[str, int] = {}
    for entry in raw:
        folded = unicodedata.normalize("NFC", entry.name.decode("utf-8", "replace")).casefold()
        seen[folded] = seen.get(folded, 0) + 1
    for entry in raw:
        shown = shown_name(entry.name)
        if (why := entry_name_problem(entry.name)) is not None:
            problems.append((shown, "name", f"the name {why}"))
            continue
        text = entry.name.decode("utf-8")
        if seen[unicodedata.normalize("NFC", text).casefold()] > 1:
            problems.append((shown, "duplicate", "appears more than once in its folder"))
            continue
        if entry.mode not in FILE_MODES and entry.mode != TREE_MODE:
            kind = MODE_NAMES.get(entry.mode, f"of mode {shown_name(entry.mode)}")
            problems.append((shown, "mode", f"is {kind}; only regular files and folders are read"))
            continue
        accepted.append((entry, text))
    return accepted, problems


def lookup(entries: Iterable[RawEntry], name: str) -> list[RawEntry]:
    """Every entry of one folder called ``name`` (a crafted tree may hold several)."""
    wanted = name.encode("utf-8")
    return [e for e in entries if e.name == wanted]
