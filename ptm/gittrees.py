"""Reading many trees and blobs of a repository with few git processes.

``git ls-tree -r -z`` lists a tree (a few at a time, in threads); ``git cat-file --batch`` reads
any number of objects in one process. Paths come back exactly as the tree has them: callers
treat them as untrusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ptm.gitrepo import GitRepo

LIST_WORKERS = 8


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
