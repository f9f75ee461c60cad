"""Crafting git objects that ``git add`` never makes, for tests of hostile registries.

Trees are written with ``git hash-object -t tree --literally``, so any bytes go: duplicate
names, ``..``, ``.git``, newlines, invalid UTF-8, slashes, symlinks, gitlinks. Commits are made
with ``git commit-tree`` and pushed with a plain ``git push`` to a real bare registry (which,
like most hosts, does not run ``fsck`` on receive).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

FILE = b"100644"
EXEC = b"100755"
TREE = b"40000"
LINK = b"120000"
GITLINK = b"160000"

RawEntry = tuple[bytes, bytes, str]  # mode, name, oid (hex)


def _git(
    repo: Path, *args: str, data: bytes | None = None, env: Mapping[str, str] | None = None
) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=repo,
        input=data,
        capture_output=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return done.stdout.decode().strip()


def blob(repo: Path, data: bytes) -> str:
    return _git(repo, "hash-object", "-w", "--stdin", data=data)


def big_blob(repo: Path, size: int, *, fill: bytes = b"\0") -> str:
    """A blob of ``size`` bytes ``fill`` (zero bytes unless told): hundreds of megabytes that
    compress to a few kilobytes. ``fill=b"#"`` makes one long YAML comment, a valid document."""
    with subprocess.Popen(
        # the fastest compression: the blob is written in seconds, not tens of seconds
        ["git", "-c", "core.looseCompression=1", "hash-object", "-w", "--stdin"],
        cwd=repo,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        chunk = fill * (1024 * 1024)
        left = size
        while left > 0:
            proc.stdin.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        proc.stdin.close()
        return proc.stdout.read().decode().strip()


def tree(repo: Path, entries: Sequence[RawEntry], *, keep_order: bool = False) -> str:
    """A tree object holding exactly ``entries`` (duplicates too), in git's order unless
    ``keep_order``: a tree out of order is a shape of its own."""
    if not keep_order:
        entries = sorted(entries, key=lambda e: e[1] + (b"/" if e[0] == TREE else b""))
    data = b"".join(mode + b" " + name + b"\0" + bytes.fromhex(oid) for mode, name, oid in entries)
    return _git(repo, "hash-object", "-t", "tree", "--literally", "-w", "--stdin", data=data)


def tree_of(repo: Path, files: Mapping[str, bytes]) -> str:
    """An ordinary tree from ``{"a/b.txt": b"..."}`` (built level by level)."""
    here: dict[str, bytes] = {}
    folders: dict[str, dict[str, bytes]] = {}
    for path, data in files.items():
        first, _, rest = path.partition("/")
        if rest:
            folders.setdefault(first, {})[rest] = data
        else:
            here[first] = data
    entries: list[RawEntry] = [
        (FILE, name.encode(), blob(repo, data)) for name, data in here.items()
    ]
    entries += [(TREE, name.encode(), tree_of(repo, sub)) for name, sub in folders.items()]
    return tree(repo, sorted(entries, key=lambda e: e[1] + (b"/" if e[0] == TREE else b"")))


def read_tree_entries(repo: Path, treeish: str) -> list[RawEntry]:
    """The raw entries of an existing tree (to graft crafted ones beside them)."""
    data = subprocess.run(
        ["git", "cat-file", "tree", treeish], cwd=repo, capture_output=True, check=True
    ).stdout
    entries = []
    position = 0
    while position < len(data):
        space = data.index(b" ", position)
        nul = data.index(b"\0", space)
        entries.append(
            (data[position:space], data[space + 1 : nul], data[nul + 1 : nul + 21].hex())
        )
        position = nul + 21
    return entries


def replace_entries(repo: Path, treeish: str, name: bytes, new: Sequence[RawEntry]) -> str:
    """Tree ``treeish`` with every entry called ``name`` replaced by ``new`` (one or several)."""
    kept = [e for e in read_tree_entries(repo, treeish) if e[1] != name]
    return tree(repo, [*kept, *new])


def commit(
    repo: Path,
    tree_oid: str,
    parents: Sequence[str],
    message: str = "crafted",
    *,
    sign_key: Path | None = None,
) -> str:
    args = ["commit-tree", tree_oid, "-m", message]
    for parent in parents:
        args += ["-p", parent]
    config: list[str] = []
    if sign_key is not None:
        config = ["-c", "gpg.format=ssh", "-c", f"user.signingKey={sign_key}"]
        args.insert(1, "-S")
    return _git(repo, *config, *args)


def push_commit(clone: Path, sha: str, ref: str = "refs/heads/main") -> None:
    _git(clone, "push", "-q", "--force", "origin", f"{sha}:{ref}")


def tasks_tree(clone: Path, base: str) -> str:
    """The ``tasks/`` tree of ``base``, or an empty tree when it has none (a new registry)."""
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{base}:tasks"],
        cwd=clone,
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() if found.returncode == 0 else tree(clone, [])


def graft_task(
    clone: Path,
    name: bytes,
    new: Sequence[RawEntry],
    *,
    base: str = "origin/main",
    sign_key: Path | None = None,
    message: str = "crafted task",
) -> str:
    """A commit on ``base`` whose ``tasks/`` tree has ``new`` in place of entries ``name``."""
    _git(clone, "fetch", "-q", "origin")
    root = f"{base}^{{tree}}"
    new_tasks = replace_entries(clone, tasks_tree(clone, base), name, new)
    new_root = replace_entries(clone, root, b"tasks", [(TREE, b"tasks", new_tasks)])
    parent = _git(clone, "rev-parse", base)
    return commit(clone, new_root, [parent], message, sign_key=sign_key)
