"""The one place ptm reads git trees it does not trust: the tasks branch and every results branch.

Anyone who can push may craft trees that ``git add`` never makes (``git mktree``, ``git
hash-object -t tree``…): names ``..`` or ``.git`` or with newlines, duplicate entries, symlinks,
gitlinks, blobs of hundreds of megabytes that cost a few kilobytes to push, very deep or very wide
trees. So this module reads *raw tree objects* from git, has ``ptm.tree_entries`` parse and
check every entry (names, modes, duplicates, git's order) before any blob is read or anything
touches the filesystem, and checks sizes before contents: each blob against a cap, the total
against a cap, tree objects too; caps on the number of entries and the depth.

A walk (``read_trees``) talks to one ``git cat-file --batch-command`` (``ptm.catfile``) from
start to end: each level's sizes, then that level's listings, then every blob's size. A
``CheckedTree`` holds only entries that passed, plus every ``TreeProblem`` found. Blob texts are
read only for checked entries (``read_texts``), and a tree is written out (``write_tree``) only
into a folder that does not exist yet, creating every path relative to an already opened folder
with no-follow semantics, so nothing is ever written through a link; each file is copied from
git a chunk at a time, so a file of any size allowed never sits in memory whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ptm.catfile import CatFile
from ptm.errors import PtmError
from ptm.gitrepo import GitRepo
from ptm.gittrees import parse_batch_output
from ptm.tree_entries import (
    FILE_MODES,
    TREE_MODE,
    Caps,
    CheckedTree,
    Entry,
    RawEntry,
    TreeProblem,
    check_folder,
    in_git_order,
    lookup,
    parse_tree_object,
    shown_name,
)

# Names of ptm.tree_entries that the agent's modules import from here.
__all__ = [
    "FILE_MODES",
    "TREE_MODE",
    "Caps",
    "CheckedTree",
    "Entry",
    "RawEntry",
    "TreeProblem",
    "TreeRefused",
    "checked_tree",
    "in_git_order",
    "lookup",
    "object_sizes",
    "read_folder",
    "read_folders",
    "read_raw",
    "read_texts",
    "read_trees",
    "root_tree",
    "shown_name",
    "write_tree",
]


DEFAULT_CAPS = Caps()


class TreeRefused(PtmError):
    """A tree could not be read at all (missing, not a tree, over a cap before any entry)."""


@dataclass
class _Walk:
    caps: Caps
    where: str
    entries: list[Entry] = field(default_factory=list)
    problems: list[TreeProblem] = field(default_factory=list)
    total: int = 0
    count: int = 0
    listed: int = 0  # bytes of tree objects read so far (a subtree repeated counts each time)

    def problem(self, path: str, rule: str, message: str) -> None:
        self.problems.append(
            TreeProblem(f"{self.where}/{path}" if path else self.where, rule, message)
        )


# ---- reading from git ---------------------------------------------------------------------


def object_sizes(repo: GitRepo, oids: Sequence[str]) -> list[tuple[str, int] | None]:
    """(type, size) of each object, None when missing; one ``git cat-file --batch-check``."""
    if not oids:
        return []
    request = "".join(f"{oid}\n" for oid in oids).encode("ascii")
    out = repo.run_with_input("cat-file", "--batch-check", stdin=request)
    found: list[tuple[str, int] | None] = []
    for line in out.decode("ascii", "replace").splitlines()[: len(oids)]:
        parts = line.split(" ")
        found.append((parts[1], int(parts[2])) if len(parts) == 3 else None)
    return found


def read_raw(repo: GitRepo, oids: Sequence[str]) -> list[bytes | None]:
    """Contents of objects already checked for size; one ``git cat-file --batch``."""
    if not oids:
        return []
    request = "".join(f"{oid}\n" for oid in oids).encode("ascii")
    objects = parse_batch_output(
        repo.run_with_input("cat-file", "--batch", stdin=request), len(oids)
    )
    return [obj.data if obj is not None else None for obj in objects]


def root_tree(repo: GitRepo, commit: str) -> str:
    """The root tree of ``commit``; TreeRefused when it is not a commit of this repository."""
    oid = repo.rev_parse(commit)
    if oid is None:
        raise TreeRefused(f"{commit[:12]} is not a commit of {repo.path}")
    return repo.run("rev-parse", f"{oid}^{{tree}}")


def read_folder(repo: GitRepo, tree_oid: str, *, where: str, max_bytes: int) -> list[RawEntry]:
    """The raw entries of one tree object; TreeRefused when it is missing, no tree, or too big."""
    (found,) = read_folders(repo, [tree_oid], max_bytes=max_bytes, max_total_bytes=max_bytes)
    if isinstance(found, str):
        raise TreeRefused(f"{where}: {found.removeprefix('is ')}")
    return found


def read_folders(
    repo: GitRepo, oids: Sequence[str], *, max_bytes: int, max_total_bytes: int
) -> list[list[RawEntry] | str]:
    """The raw entries of many tree objects with one git process; for each tree that is
    missing, no tree, over ``max_bytes``, beyond ``max_total_bytes`` in all, or malformed,
    why (a message) instead. Sizes are checked before anything is read."""
    if not oids:
        return []
    with CatFile(repo) as cat:
        return _read_folders(cat, oids, max_bytes, max_total_bytes)


def _read_folders(
    cat: CatFile, oids: Sequence[str], max_bytes: int, max_total_bytes: int
) -> list[list[RawEntry] | str]:
    found: list[list[RawEntry] | str] = []
    wanted: list[tuple[int, str]] = []
    total = 0
    for index, (oid, info) in enumerate(zip(oids, cat.info(oids), strict=True)):
        if info is None or info[0] != "tree":
            found.append("is not a folder")
        elif info[1] > max_bytes:
            found.append(f"its listing is {info[1]} bytes, at most {max_bytes} are read")
        elif total + info[1] > max_total_bytes:
            found.append(f"brings the listings read over {max_total_bytes} bytes")
        else:
            total += info[1]
            found.append([])
            wanted.append((index, oid))
    for (index, _), data in zip(wanted, cat.contents([oid for _, oid in wanted]), strict=True):
        try:
            found[index] = parse_tree_object(data or b"")
        except ValueError as exc:
            found[index] = f"is not a well-formed tree ({exc})"
    return found


def read_trees(
    repo: GitRepo, roots: Sequence[tuple[str, str]], *, caps: Caps = DEFAULT_CAPS
) -> list[CheckedTree]:
    """Walk many trees ``(where, tree oid)`` at once, breadth first, checking each level before
    reading the next; ``caps`` hold for each tree. One git process for the whole walk, whatever
    the number of trees and levels. A tree whose top cannot be read gets one problem with rule
    ``unreadable`` and no entries."""
    with CatFile(repo) as cat:
        return _walk(cat, roots, caps)


def _walk(cat: CatFile, roots: Sequence[tuple[str, str]], caps: Caps) -> list[CheckedTree]:
    walks = [_Walk(caps, where) for where, _ in roots]
    blobs: list[list[tuple[str, RawEntry]]] = [[] for _ in roots]
    level: list[tuple[int, str, str]] = [(i, "", oid) for i, (_, oid) in enumerate(roots)]
    full: set[int] = set()
    depth = 0
    while level:
        depth += 1
        next_level: list[tuple[int, str, str]] = []
        for index, path, raw in _read_level(cat, walks, level, top=depth == 1):
            if index in full:
                continue
            walk = walks[index]
            accepted, problems = check_folder(raw)
            for name, rule, message in problems[: max(0, caps.max_entries - len(walk.problems))]:
                walk.problem(_join(path, name), rule, message)
            if len(walk.problems) >= caps.max_entries:  # a listing of nothing but bad names
                walk.problem(path, "max-entries", f"more than {caps.max_entries} problems")
                full.add(index)
                continue
            for entry, name in accepted:
                child = _join(path, name)
                if walk.count >= caps.max_entries:
                    walk.problem(child, "max-entries", f"more than {caps.max_entries} entries")
                    full.add(index)
                    break
                if depth > caps.max_depth:
                    walk.problem(child, "max-depth", f"deeper than {caps.max_depth} levels")
                    continue
                walk.count += 1
                if entry.mode == TREE_MODE:
                    walk.entries.append(Entry(child, entry.oid, True))
                    next_level.append((index, child, entry.oid))
                else:
                    blobs[index].append((child, entry))
        level = [item for item in next_level if item[0] not in full]
    _check_blobs(cat, walks, blobs)
    return [
        CheckedTree(oid, tuple(sorted(w.entries, key=lambda e: e.path)), tuple(w.problems))
        for w, (_, oid) in zip(walks, roots, strict=True)
    ]


def checked_tree(
    repo: GitRepo, tree_oid: str, *, where: str, caps: Caps = DEFAULT_CAPS
) -> CheckedTree:
    """``read_trees`` for one tree; TreeRefused when the tree itself cannot be read."""
    (found,) = read_trees(repo, [(where, tree_oid)], caps=caps)
    if found.problems and found.problems[0].rule == "unreadable":
        raise TreeRefused(f"{where}: {found.problems[0].message}")
    return found


def _join(folder: str, name: str) -> str:
    if not name:  # a problem of the folder itself
        return folder
    return f"{folder}/{name}" if folder else name


def _read_level(
    cat: CatFile, walks: list[_Walk], level: list[tuple[int, str, str]], *, top: bool
) -> list[tuple[int, str, list[RawEntry]]]:
    sizes = cat.info([oid for _, _, oid in level])
    wanted: list[tuple[int, str, str]] = []
    for (index, path, oid), info in zip(level, sizes, strict=True):
        rule = "unreadable" if top else "missing"
        if info is None or info[0] != "tree":
            walks[index].problem(path, rule, "not a folder" if top else "its folder is missing")
        elif info[1] > walks[index].caps.max_tree_bytes:
            limit = walks[index].caps.max_tree_bytes
            message = f"its listing is {info[1]} bytes, at most {limit} are read"
            walks[index].problem(path, "unreadable" if top else "max-bytes", message)
        elif walks[index].listed + info[1] > walks[index].caps.max_total_bytes:
            # One subtree named a thousand times would otherwise be read a thousand times.
            limit = walks[index].caps.max_total_bytes
            message = f"brings the listings read over {limit} bytes in all"
            walks[index].problem(path, "max-bytes", message)
        else:
            walks[index].listed += info[1]
            wanted.append((index, path, oid))
    contents = []
    for (index, path, _), data in zip(
        wanted, cat.contents([oid for _, _, oid in wanted]), strict=True
    ):
        try:
            contents.append((index, path, parse_tree_object(data or b"")))
        except ValueError as exc:
            rule = "unreadable" if top else "malformed"
            walks[index].problem(path, rule, f"not a well-formed tree ({exc})")
    return contents


def _check_blobs(cat: CatFile, walks: list[_Walk], blobs: list[list[tuple[str, RawEntry]]]) -> None:
    flat = [(index, path, entry) for index, items in enumerate(blobs) for path, entry in items]
    sizes = cat.info([entry.oid for _, _, entry in flat])
    for (index, path, entry), info in zip(flat, sizes, strict=True):
        walk = walks[index]
        if info is None or info[0] != "blob":
            walk.problem(path, "missing", "its file object is missing or not a file")
        elif info[1] > walk.caps.max_blob_bytes:
            message = f"is {info[1]} bytes, at most {walk.caps.max_blob_bytes}"
            walk.problem(path, "max-bytes", message)
        elif walk.total + info[1] > walk.caps.max_total_bytes:
            message = f"brings the total over {walk.caps.max_total_bytes} bytes"
            walk.problem(path, "max-total-bytes", message)
        else:
            walk.total += info[1]
            walk.entries.append(Entry(path, entry.oid, False, entry.mode == b"100755", info[1]))


def read_texts(repo: GitRepo, entries: Sequence[Entry]) -> dict[str, bytes]:
    """The contents of checked file entries (their sizes were checked), by path."""
    files = [e for e in entries if not e.is_dir]
    found = read_raw(repo, [e.oid for e in files])
    return {e.path: data for e, data in zip(files, found, strict=True) if data is not None}


# ---- writing out --------------------------------------------------------------------------


def write_tree(repo: GitRepo, tree: CheckedTree, dest: Path, *, file_mode: int = 0o644) -> None:
    """Write the checked entries of ``tree`` into ``dest``, which must not exist yet.

    Every folder is created with ``mkdir`` relative to its already opened parent, every file
    with ``O_CREAT | O_EXCL | O_NOFOLLOW``: nothing is written through a link or over anything.
    Each file is copied from git a chunk at a time (one git process for the whole tree). At
    most OPEN_FOLDERS folders are held open at once, however many the tree has.
    """
    dest.mkdir(mode=0o700)
    folders = _Folders(os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW))
    try:
        for entry in tree.entries:
            if entry.is_dir:
                parent, name = _split(entry.path)
                os.mkdir(name, 0o700, dir_fd=folders.open(parent))
                os.fchmod(folders.open(entry.path), 0o755)
        if tree.files:
            with CatFile(repo) as cat:
                for entry in tree.files:
                    parent, name = _split(entry.path)
                    mode = file_mode | (0o111 if entry.executable else 0)
                    _copy_new(cat, entry.oid, folders.open(parent), name, mode)
    finally:
        folders.close()
    dest.chmod(0o755)


OPEN_FOLDERS = 32


class _Folders:
    """Folders below one root, opened component by component (``O_NOFOLLOW``), a few kept."""

    def __init__(self, root_fd: int) -> None:
        self._root = root_fd
        self._open: dict[str, int] = {}

    def open(self, path: str) -> int:
        if not path:
            return self._root
        if path in self._open:
            return self._open[path]
        parent, name = _split(path)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=self.open(parent))
        while len(self._open) >= OPEN_FOLDERS:
            os.close(self._open.pop(next(iter(self._open))))
        self._open[path] = fd
        return fd

    def close(self) -> None:
        for fd in [*self._open.values(), self._root]:
            os.close(fd)
        self._open.clear()


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


def _copy_new(cat: CatFile, oid: str, folder_fd: int, name: str, mode: int) -> None:
    """A new file ``name`` in ``folder_fd`` holding blob ``oid`` (empty if it went missing)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=folder_fd)
    with os.fdopen(fd, "wb") as stream:
        cat.copy(oid, stream.write)
        os.fchmod(stream.fileno(), mode)
