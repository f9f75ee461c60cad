"""The ledger's objects written by ptm itself: blobs, trees and commits as loose objects.

A record changes a few small files (``status.yaml``, ``log.txt``) on a few folders of the
agent's own bare repository. Writing them through git costs a process each for the blobs, the
index, the trees and the commit, on every task's way from one state to the next; written here,
a record costs no git process at all: the branch is moved as ``git update-ref`` moves it
(``move_ref``: git's own lock file, the old value checked under it), or by ``update-ref`` itself
where the repository is not one of plain ref files. Objects are git's loose format
(``<kind> <size>\\0<data>``, zlib, named by SHA-1), each written to a temporary file and
renamed into place, so a reader never sees half of one.

``JournalTrees`` keeps the folders it last wrote or read (by path, a bounded number), so a
record reads no tree from git; a folder it does not hold is read once, its size checked first.
Big files (collected outputs, sealed results) are not read into memory here: the ledger hands
them to ``git hash-object``, which streams them.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
import tempfile
import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from ptm import process
from ptm.errors import CommandTimedOut, RegistryError
from ptm.gitrepo import GitRepo
from ptm.tree_entries import TREE_MODE
from ptm.treecheck import TreeRefused, read_folder

FILE_MODE = b"100644"  # what a record writes (no executable files)
MAX_FOLDER_BYTES = 16 * 1024**2  # one folder's listing read back from git (~180,000 tasks)
HEX_ID = re.compile(r"[0-9a-f]{40}")
SIGNING_LIMIT_S = 60.0
KEPT_FOLDERS = 256  # folders held in memory besides the top two, most recently used first

Folder = dict[bytes, tuple[bytes, str]]  # name -> (mode, object id)


def _header(kind: str, data: bytes) -> bytes:
    return f"{kind} {len(data)}\0".encode()


def object_id(kind: str, data: bytes) -> str:
    return hashlib.sha1(_header(kind, data) + data, usedforsecurity=False).hexdigest()


EMPTY_TREE = object_id("tree", b"")


def write_object(repository: Path, kind: str, data: bytes) -> str:
    """Write one loose object into the bare repository at ``repository``; its id."""
    oid = object_id(kind, data)
    folder = repository / "objects" / oid[:2]
    target = folder / oid[2:]
    if target.exists():
        return oid
    folder.mkdir(mode=0o755, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=folder, prefix="tmp_obj_")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(zlib.compress(_header(kind, data) + data, 1))
        temporary.chmod(0o444)
        temporary.replace(target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return oid


def tree_object(folder: Folder) -> bytes:
    """A tree object of ``folder``, its entries in git's order (a folder sorts as ``name/``)."""
    return Listing.of(folder).data()


class Listing:
    """One folder's entries, kept in git's order with each entry's bytes, so that changing a
    few entries of a big folder (``results/``, one entry per task) costs a search and a join,
    not a sort and a serialisation of every entry."""

    def __init__(self, entries: Folder, keys: list[bytes], chunks: list[bytes]) -> None:
        self.entries, self._keys, self._chunks = entries, keys, chunks

    @classmethod
    def of(cls, folder: Folder) -> Listing:
        names = sorted(folder, key=lambda name: _order(name, folder[name][0]))
        keys = [_order(name, folder[name][0]) for name in names]
        return cls(dict(folder), keys, [_entry(name, *folder[name]) for name in names])

    def copy(self) -> Listing:
        return Listing(dict(self.entries), list(self._keys), list(self._chunks))

    def set(self, name: bytes, mode: bytes, oid: str) -> None:
        self.remove(name)
        key = _order(name, mode)
        at = bisect.bisect_left(self._keys, key)
        self._keys.insert(at, key)
        self._chunks.insert(at, _entry(name, mode, oid))
        self.entries[name] = (mode, oid)

    def remove(self, name: bytes) -> None:
        old = self.entries.pop(name, None)
        if old is not None:
            at = bisect.bisect_left(self._keys, _order(name, old[0]))
            del self._keys[at], self._chunks[at]

    def data(self) -> bytes:
        return b"".join(self._chunks)


def _order(name: bytes, mode: bytes) -> bytes:
    return name + b"/" if mode == TREE_MODE else name


def _entry(name: bytes, mode: bytes, oid: str) -> bytes:
    return mode + b" " + name + b"\0" + bytes.fromhex(oid)


def commit_object(tree: str, parents: list[str], identity: str, message: str) -> bytes:
    """A commit object as ``git commit-tree -m`` writes it (author and committer now)."""
    offset = time.localtime().tm_gmtoff
    sign = "+" if offset >= 0 else "-"
    zone = f"{sign}{abs(offset) // 3600:02d}{abs(offset) % 3600 // 60:02d}"
    stamp = f"{identity} {int(time.time())} {zone}"
    lines = [f"tree {tree}", *(f"parent {p}" for p in parents)]
    lines += [f"author {stamp}", f"committer {stamp}", "", message]
    text = "\n".join(lines)
    return (text if text.endswith("\n") else text + "\n").encode()


def signed_commit_object(unsigned: bytes, signature: bytes) -> bytes:
    """``unsigned`` with ``signature`` in a ``gpgsig`` header after the others, as git puts
    it (each further line of the signature indented by one space): what git verifies."""
    head, _, message = unsigned.partition(b"\n\n")
    lines = signature.rstrip(b"\n").split(b"\n")
    return head + b"\ngpgsig " + b"\n ".join(lines) + b"\n\n" + message


def ssh_signature(key: Path, payload: bytes) -> bytes:
    """An SSH signature of ``payload`` in git's namespace (``ssh-keygen -Y sign``, as git's
    ``gpg.format=ssh`` makes), within a deadline; RegistryError when it cannot be made."""
    command = ["ssh-keygen", "-Y", "sign", "-n", "git", "-f", str(key)]
    try:
        done = process.run_bounded(
            command, cwd=None, env=os.environ, stdin=payload, timeout=SIGNING_LIMIT_S
        )
    except (OSError, CommandTimedOut) as exc:
        raise RegistryError(f"{key}: signing a result commit failed: {exc}") from exc
    said = done.stderr.decode("utf-8", "replace").strip().splitlines()
    if done.returncode != 0 or not done.stdout.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        reason = said[-1] if said else f"ssh-keygen exited with {done.returncode}"
        raise RegistryError(
            f"{key}: signing a result commit failed (signing_key): {reason}; nothing was "
            "recorded, the next cycle tries again"
        )
    return done.stdout


def can_move_refs(repo: GitRepo) -> bool:
    """Whether ``move_ref`` may write this repository's refs, as git's configuration (every
    level of it) says: refs are plain files (not a reftable, which a newer git may make) and
    no reflog is kept for them."""
    try:
        out = repo.run(
            "config", "--get-regexp", r"^(extensions\.refstorage|core\.logallrefupdates)$"
        )
    except RegistryError:
        return True  # exit 1: neither is set, git's defaults for a bare repository
    settings = dict(line.partition(" ")[::2] for line in out.lower().splitlines())
    storage = settings.get("extensions.refstorage", "files")
    logs = settings.get("core.logallrefupdates", "false")
    return storage == "files" and logs not in ("true", "always", "yes", "on", "1")


def move_ref(repository: Path, ref: str, new: str, old: str | None) -> None:
    """Point ``ref`` at ``new`` if it is at ``old`` (None: no such ref yet), as git's
    ``update-ref`` does with a files repository: ``<ref>.lock`` made exclusively (a lock any
    git honours), the old value checked under it, then renamed over the ref."""
    path = repository / ref
    lock = path.with_name(path.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError as exc:
        raise RegistryError(
            f"{lock} exists: another git process is updating {ref} (or one was killed: it is "
            "removed at the agent's next start); nothing was recorded"
        ) from exc
    try:
        with os.fdopen(handle, "w", encoding="ascii") as stream:
            stream.write(new + "\n")
        current = read_ref(repository, ref)
        if current != old:
            raise RegistryError(
                f"{repository}: {ref} is at {current or 'nothing'}, not at {old or 'nothing'} "
                "as this agent left it: something else wrote its journal; nothing was recorded"
            )
        lock.replace(path)
    except BaseException:
        lock.unlink(missing_ok=True)
        raise


def read_ref(repository: Path, ref: str) -> str | None:
    """The commit ``ref`` names in a files repository: its loose file, else ``packed-refs``."""
    try:
        text = (repository / ref).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = ""
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise RegistryError(f"{repository / ref}: not a ref file git wrote") from exc
    if text:
        if not HEX_ID.fullmatch(text):
            raise RegistryError(f"{repository / ref}: not a ref file git wrote ({text[:60]!r})")
        return text
    try:
        packed = (repository / "packed-refs").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    for line in packed.splitlines():
        oid, _, name = line.partition(" ")
        if name == ref and HEX_ID.fullmatch(oid):
            return oid
    return None


class JournalTrees:
    """Writes new root trees of the ledger's branch from changed paths, folder by folder."""

    def __init__(
        self, repository: Path, repo: GitRepo, *, max_folder_bytes: int = MAX_FOLDER_BYTES
    ) -> None:
        self.repository = repository
        self.repo = repo
        self.max_folder_bytes = max_folder_bytes
        self._folders: OrderedDict[tuple[bytes, ...], tuple[str, Listing]] = OrderedDict()

    def forget(self) -> None:
        self._folders.clear()

    def change(self, root: str | None, blobs: Mapping[str, str], drop: tuple[str, ...] = ()) -> str:
        """The root tree that is ``root`` (None: empty) with ``blobs`` (path -> blob id) in
        place and the folders ``drop`` (paths) gone; every tree it needs is written."""
        edits: dict[tuple[bytes, ...], tuple[bytes, str] | None] = {}
        for path in drop:
            edits[_parts(path)] = None
        for path, blob in blobs.items():
            edits[_parts(path)] = (FILE_MODE, blob)
        return self._write((), root, edits)

    def _write(
        self,
        where: tuple[bytes, ...],
        oid: str | None,
        edits: Mapping[tuple[bytes, ...], tuple[bytes, str] | None],
    ) -> str:
        folder = self._folder(where, oid).copy() if oid is not None else Listing({}, [], [])
        below: dict[bytes, dict[tuple[bytes, ...], tuple[bytes, str] | None]] = {}
        for parts, entry in edits.items():
            if len(parts) > 1:
                below.setdefault(parts[0], {})[parts[1:]] = entry
            elif entry is None:
                folder.remove(parts[0])
            else:
                folder.set(parts[0], *entry)
        for name, inner in below.items():
            current = folder.entries.get(name)
            sub = current[1] if current is not None and current[0] == TREE_MODE else None
            if sub is None and all(entry is None for entry in inner.values()):
                continue  # dropping something below a folder that is not there
            written = self._write((*where, name), sub, inner)
            if written == EMPTY_TREE:
                folder.remove(name)  # git keeps no empty folders
            else:
                folder.set(name, TREE_MODE, written)
        new = write_object(self.repository, "tree", folder.data())
        self._keep(where, new, folder)
        return new

    def _folder(self, where: tuple[bytes, ...], oid: str) -> Listing:
        kept = self._folders.get(where)
        if kept is not None and kept[0] == oid:
            self._folders.move_to_end(where)
            return kept[1]
        shown = "/".join(p.decode("utf-8", "replace") for p in where) or "the top folder"
        try:
            listing = read_folder(self.repo, oid, where=shown, max_bytes=self.max_folder_bytes)
        except TreeRefused as exc:
            raise RegistryError(f"the results journal {self.repository}: {exc}") from exc
        folder = Listing.of({entry.name: (entry.mode, entry.oid) for entry in listing})
        self._keep(where, oid, folder)
        return folder

    def _keep(self, where: tuple[bytes, ...], oid: str, folder: Listing) -> None:
        self._folders[where] = (oid, folder)
        self._folders.move_to_end(where)
        while len(self._folders) > KEPT_FOLDERS + 2:
            oldest = next(iter(self._folders))
            if len(oldest) <= 1:  # the top folder and results/ are wanted by every record
                self._folders.move_to_end(oldest)
                continue
            del self._folders[oldest]


def _parts(path: str) -> tuple[bytes, ...]:
    return tuple(part.encode() for part in path.split("/"))
