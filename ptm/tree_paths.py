"""Finding files at known paths in many untrusted branches at once, one tree level at a time.

The overview, the detail view and ``ptm results`` need a few files at known places
(``results/<task>/<site>/status.yaml``, ``tasks/<id>/task.yaml``) from dozens of branches. Each
level of all of them is read with one git process (``ptm.treecheck.read_folders``, sizes
first), and each folder's entries are checked by ``ptm.tree_entries.check_folder``. A path that
leads through anything refused (a duplicate name, a link, a blob where a folder should be, a
folder where a file should be, a listing or a file over its cap) gives a ``Refused`` naming the
path and the rule, never an exception, so one bad branch leaves every other one readable.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ptm.catfile import CatFile
from ptm.gitrepo import GitRepo
from ptm.tree_entries import FILE_MODES, MODE_NAMES, TREE_MODE, RawEntry, check_folder
from ptm.treecheck import read_folders

K = TypeVar("K", bound=Hashable)

FOLDER_BYTES = 16 * 1024**2  # one listing: some 300,000 entries, for registries of many tasks
LEVEL_BYTES = 256 * 1024**2  # all listings of one level together
CHUNK_BYTES = 32 * 1024**2  # file contents in memory at once while reading many
_HEX = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Refused:
    """Why a path could not be followed: ``message`` names the path (safe text) and the rule."""

    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Folder:
    """One checked folder: entries that passed, and why each refused name was refused."""

    entries: Mapping[str, RawEntry]
    refused: Mapping[str, str]  # name as shown (escaped) → why

    def pick(self, name: str, where: str) -> RawEntry | Refused | None:
        """The one entry called ``name`` (None when there is none)."""
        if name in self.refused:
            return Refused(f"{where}: {self.refused[name]}")
        return self.entries.get(name)


def root_trees(repo: GitRepo, commits: Mapping[K, str]) -> dict[K, str | Refused]:
    """The root tree of each commit, with one ``git cat-file --batch-check``."""
    keys = [k for k in commits if _HEX.fullmatch(commits[k])]
    found: dict[K, str | Refused] = {
        k: Refused(f"{commits[k][:40]!r}: not a commit id") for k in commits if k not in keys
    }
    request = "".join(f"{commits[k]}^{{tree}}\n" for k in keys).encode("ascii")
    out = repo.run_with_input("cat-file", "--batch-check", stdin=request) if keys else b""
    for key, line in zip(keys, out.decode("ascii", "replace").splitlines(), strict=True):
        parts = line.split(" ")
        if len(parts) == 3 and parts[1] == "tree":
            found[key] = parts[0]
        else:
            found[key] = Refused(f"{commits[key][:12]}: not a readable commit")
    return found


def list_folders(
    repo: GitRepo, trees: Mapping[K, str], where: Mapping[K, str], *, max_bytes: int = FOLDER_BYTES
) -> dict[K, Folder | Refused]:
    """Each tree's checked folder; ``where`` names each tree in messages."""
    keys = list(trees)
    unique = list(dict.fromkeys(trees.values()))  # the same tree is often reached twice
    read = read_folders(repo, unique, max_bytes=max_bytes, max_total_bytes=LEVEL_BYTES)
    by_oid = dict(zip(unique, read, strict=True))
    listings = [by_oid[trees[k]] for k in keys]
    found: dict[K, Folder | Refused] = {}
    for key, raw in zip(keys, listings, strict=True):
        if isinstance(raw, str):
            found[key] = Refused(f"{where[key]}: {raw}")
            continue
        accepted, problems = check_folder(raw)
        refused = {name: f"{message} [{rule}]" for name, rule, message in problems}
        found[key] = Folder({name: entry for entry, name in accepted}, refused)
    return found


def step(
    repo: GitRepo,
    trees: Mapping[K, str | Refused | None],
    name: str | Mapping[K, str],
    where: Mapping[K, str],
    *,
    max_bytes: int = FOLDER_BYTES,
) -> dict[K, RawEntry | Refused | None]:
    """Entry ``name`` (or ``name[key]``) of each tree; a Refused or None in ``trees`` stays."""
    readable = {k: oid for k, oid in trees.items() if isinstance(oid, str)}
    folders = list_folders(repo, readable, where, max_bytes=max_bytes)
    found: dict[K, RawEntry | Refused | None] = {}
    for key, tree in trees.items():
        folder = folders.get(key)
        if not isinstance(tree, str):
            found[key] = tree
        elif isinstance(folder, Folder):
            wanted = name if isinstance(name, str) else name[key]
            found[key] = folder.pick(wanted, child(where[key], wanted))
        else:
            found[key] = folder
    return found


def as_folder(entry: RawEntry | Refused | None, where: str) -> str | Refused | None:
    """The tree id of ``entry``, or why it is no folder."""
    if entry is None or isinstance(entry, Refused):
        return entry
    if entry.mode != TREE_MODE:
        return Refused(f"{where}: {_kind(entry.mode)}, where a folder should be")
    return entry.oid


def follow(
    repo: GitRepo,
    roots: Mapping[K, str | Refused | None],
    path: Sequence[str | Mapping[K, str]],
    where: Mapping[K, str],
) -> dict[K, str | Refused | None]:
    """The tree at folder ``path`` below each root (each part a folder, the same for every
    root or one per root), or why not."""
    current: dict[K, str | Refused | None] = dict(roots)
    shown = dict(where)
    for part in path:
        entries = step(repo, current, part, shown)
        shown = {
            k: child(label, part if isinstance(part, str) else part[k])
            for k, label in shown.items()
        }
        current = {k: as_folder(entry, shown[k]) for k, entry in entries.items()}
    return current


def child(label: str, name: str) -> str:
    """``results/a:results`` for ``results/a:`` and ``results``; ``…/t1`` below a folder."""
    return f"{label}{name}" if label.endswith(":") else f"{label}/{name}"


@dataclass(frozen=True)
class Wanted:
    """A path to find below a commit's root; ``label`` names the branch in messages."""

    commit: str
    path: tuple[str, ...]
    label: str


def locate(repo: GitRepo, wanted: Mapping[K, Wanted]) -> dict[K, RawEntry | Refused | None]:
    """The entry at each wanted path (every part before the last a folder), all paths walked
    together: one git process for the roots and one per level, whatever their number."""
    roots = root_trees(repo, {k: w.commit for k, w in wanted.items()})
    current: dict[K, str | Refused | None] = dict(roots)
    found: dict[K, RawEntry | Refused | None] = {}
    depth = 0
    while current:
        labels = {k: _label(wanted[k], depth) for k in current}
        entries = step(repo, current, {k: wanted[k].path[depth] for k in current}, labels)
        depth += 1
        current = {}
        for key, entry in entries.items():
            if depth == len(wanted[key].path) or not isinstance(entry, RawEntry):
                found[key] = entry
            else:
                current[key] = as_folder(entry, _label(wanted[key], depth))
    return found


def _label(wanted: Wanted, depth: int) -> str:
    return f"{wanted.label}{'/'.join(wanted.path[:depth])}"


def read_files(
    repo: GitRepo,
    entries: Mapping[K, RawEntry | Refused | None],
    where: Mapping[K, str],
    *,
    max_bytes: int | Mapping[K, int],
) -> dict[K, bytes | Refused | None]:
    """The contents of each entry that is a regular file of at most ``max_bytes`` (one cap
    for all, or one per key); sizes are checked before anything is read."""
    found: dict[K, bytes | Refused | None] = {}
    files: dict[K, str] = {}
    for key, entry in entries.items():
        if entry is None or isinstance(entry, Refused):
            found[key] = entry
        elif entry.mode not in FILE_MODES:
            found[key] = Refused(f"{where[key]}: {_kind(entry.mode)}, where a file should be")
        else:
            files[key] = entry.oid
    caps = {k: max_bytes if isinstance(max_bytes, int) else max_bytes[k] for k in files}
    contents = read_blobs(repo, list(files.values()), max_bytes=max(caps.values(), default=0))
    for key, data in zip(files, contents, strict=True):
        if isinstance(data, bytes) and len(data) > caps[key]:
            data = f"is {len(data)} bytes, at most {caps[key]} are read [max-bytes]"
        found[key] = data if isinstance(data, bytes) else Refused(f"{where[key]}: {data}")
    return found


def read_blobs(repo: GitRepo, oids: Sequence[str], *, max_bytes: int) -> list[bytes | str]:
    """Each blob's contents, or why not (missing, no file, over ``max_bytes``); sizes first."""
    return [data for _, data in iter_blobs(repo, oids, max_bytes=max_bytes)]


def iter_blobs(
    repo: GitRepo, oids: Sequence[str], *, max_bytes: int, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[str, bytes | str]]:
    """(oid, contents or why not) for each blob, in order; sizes are checked first, and the
    contents are read some ``chunk_bytes`` at a time, so a caller that keeps only what it
    needs of each holds little in memory however many there are. One git process."""
    if not oids:
        return
    with CatFile(repo) as cat:
        yield from _iter_blobs(cat, oids, max_bytes, chunk_bytes)


def _iter_blobs(
    cat: CatFile, oids: Sequence[str], max_bytes: int, chunk_bytes: int
) -> Iterator[tuple[str, bytes | str]]:
    chunk: list[str] = []
    size = 0
    for oid, info in zip(oids, cat.info(oids), strict=True):
        if info is None or info[0] != "blob":
            problem = "its file object is missing or no file [missing]"
        elif info[1] > max_bytes:
            problem = f"is {info[1]} bytes, at most {max_bytes} are read [max-bytes]"
        else:
            if chunk and size + info[1] > chunk_bytes:
                yield from _read_chunk(cat, chunk)
                chunk, size = [], 0
            chunk.append(oid)
            size += info[1]
            continue
        yield from _read_chunk(cat, chunk)  # keep the order of ``oids``
        chunk, size = [], 0
        yield oid, problem
    yield from _read_chunk(cat, chunk)


def _read_chunk(cat: CatFile, oids: list[str]) -> Iterator[tuple[str, bytes | str]]:
    for oid, data in zip(oids, cat.contents(oids), strict=True):
        yield oid, data if data is not None else "could not be read [missing]"


def _kind(mode: bytes) -> str:
    if mode == TREE_MODE:
        return "is a folder [mode]"
    return f"is {MODE_NAMES.get(mode, 'of an unknown mode')} [mode]"
