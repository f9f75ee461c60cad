"""An SFTP account's jail and quota, on plain file descriptors (no paramiko here).

Every path a client names is split into names, ``..`` is refused, and the folders are walked one
``openat`` at a time with ``O_NOFOLLOW``, so neither a ``..`` nor a symlink planted in the jail
(by anyone) leads outside it.

The quota counts the bytes the account's regular files hold, as the file system does: every
change to them (open with truncation, write, remove, rename over a file, close) happens under the
account's lock and moves the count by the sizes measured before and after it. A file's bytes are
freed when its last name is gone *and* no session has it open, so removing or renaming over a
file still open frees nothing until it is closed, and renaming a file onto itself frees nothing.
An upload (a file an open created or truncated) that does not finish, because a write was refused
or the session ended before closing it, is emptied and removed, so it holds no quota.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITING = os.O_WRONLY | os.O_RDWR

Inode = tuple[int, int]


class Jail:
    """One account's folder. Paths are resolved inside it, never through ``..`` or a symlink."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def names(path: str) -> list[str]:
        names = [name for name in path.split("/") if name not in ("", ".")]
        if any(name == ".." or "\0" in name for name in names):
            raise PermissionError(errno.EACCES, f"{path!r}: '..' is not allowed")
        return names

    @contextmanager
    def folder_of(self, path: str) -> Iterator[tuple[int, str]]:
        """An open descriptor of the folder that holds ``path``, and ``path``'s last name."""
        names = self.names(path)
        folder = os.open(self.root, _DIRECTORY)
        try:
            for name in names[:-1]:
                inner = os.open(name, _DIRECTORY, dir_fd=folder)
                os.close(folder)
                folder = inner
            yield folder, names[-1] if names else "."
        finally:
            os.close(folder)

    @contextmanager
    def opened_folder(self, path: str) -> Iterator[int]:
        with self.folder_of(path) as (folder, name):
            descriptor = os.open(name, _DIRECTORY, dir_fd=folder)
        try:
            yield descriptor
        finally:
            os.close(descriptor)


def inode(info: os.stat_result) -> Inode:
    return info.st_dev, info.st_ino


def regular_file(folder: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name`` in ``folder`` when it is a regular file, else None."""
    try:
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def stored_bytes(root: Path) -> int:
    """Bytes held by the regular files below ``root`` (a hard-linked file once), no symlinks."""
    sizes: dict[Inode, int] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            info = (Path(folder) / name).lstat()
            if stat.S_ISREG(info.st_mode):
                sizes[inode(info)] = info.st_size
    return sum(sizes.values())


class Usage:
    """Bytes one account's files hold, shared by all its sessions.

    Call the other methods only inside ``changing()``, around the change they account for.
    """

    def __init__(self, quota_bytes: int, used_bytes: int) -> None:
        self.quota_bytes = quota_bytes
        self.used_bytes = used_bytes
        self._open: Counter[Inode] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def changing(self) -> Iterator[None]:
        with self._lock:
            yield

    def fits(self, growth: int) -> bool:
        return self.used_bytes + growth <= self.quota_bytes

    def resized(self, before: int, after: int) -> None:
        self.used_bytes = max(0, self.used_bytes + after - before)

    def opened(self, info: os.stat_result) -> None:
        self._open[inode(info)] += 1

    def closed(self, info: os.stat_result) -> None:
        """``info`` is the ``fstat`` of a descriptor about to be closed."""
        key = inode(info)
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]
            if info.st_nlink == 0:  # removed while open: the file system frees it now
                self.resized(info.st_size, 0)

    def unlinked(self, info: os.stat_result) -> None:
        """``info`` is the ``lstat`` of a name just removed (or renamed over)."""
        if info.st_nlink <= 1 and inode(info) not in self._open:
            self.resized(info.st_size, 0)


@dataclass(frozen=True)
class AccountSession:
    """What an SFTP session of one logged-in account may touch."""

    account: str
    jail: Jail
    usage: Usage
    max_file_bytes: int


class QuotaRefused(OSError):
    """A write the size limit or the quota does not allow (reported as an SFTP failure)."""


class OpenFile:
    """A descriptor of one regular file in a jail, with the quota kept exact around it."""

    def __init__(self, session: AccountSession, path: str, flags: int) -> None:
        self.session, self.path = session, path
        usage = session.usage
        with usage.changing(), session.jail.folder_of(path) as (folder, name):
            before = regular_file(folder, name)
            self.descriptor = os.open(name, flags, 0o600, dir_fd=folder)
            info = os.fstat(self.descriptor)
            if not stat.S_ISREG(info.st_mode):
                os.close(self.descriptor)
                raise PermissionError(errno.EACCES, f"{path}: not a regular file")
            if before is not None and inode(before) == inode(info):
                usage.resized(before.st_size, info.st_size)  # O_TRUNC freed its bytes
            usage.opened(info)
        self.inode = inode(info)
        self.upload = bool(flags & _WRITING) and (before is None or bool(flags & os.O_TRUNC))
        self.refused = False

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.descriptor, length, offset)

    def write(self, offset: int, data: memoryview) -> None:
        """Write all of ``data`` at ``offset``; QuotaRefused (storing nothing) if not allowed."""
        end = offset + len(data)
        session = self.session
        if self.refused and self.upload:
            raise QuotaRefused(errno.EFBIG, "an earlier write of this upload was refused")
        if end > session.max_file_bytes:
            self._refuse(f"would exceed max_file_bytes ({session.max_file_bytes})")
        with session.usage.changing():
            before = os.fstat(self.descriptor).st_size
            if not session.usage.fits(max(0, end - before)):
                self._refuse(f"would exceed the quota ({session.usage.quota_bytes} bytes)")
            try:
                while data:
                    done = os.pwrite(self.descriptor, data, offset)
                    data, offset = data[done:], offset + done
            except OSError:
                self.refused = True
                raise
            finally:
                session.usage.resized(before, os.fstat(self.descriptor).st_size)

    def _refuse(self, reason: str) -> None:
        self.refused = True
        raise QuotaRefused(errno.EDQUOT, f"refused a write to {self.path}: {reason}")

    def close(self, *, finished: bool) -> bool:
        """Close; an upload not ``finished`` or with a refused write is removed (returns True)."""
        if self.descriptor < 0:
            return False
        discard = self.upload and (self.refused or not finished)
        usage = self.session.usage
        with usage.changing():
            try:
                if discard:
                    self._discard()
                usage.closed(os.fstat(self.descriptor))
            finally:
                os.close(self.descriptor)
                self.descriptor = -1
        return discard

    def _discard(self) -> None:
        """Free the upload's bytes, then remove its name if it still has the one it was given."""
        before = os.fstat(self.descriptor).st_size
        os.ftruncate(self.descriptor, 0)
        self.session.usage.resized(before, 0)
        with suppress(OSError), self.session.jail.folder_of(self.path) as (folder, name):
            info = regular_file(folder, name)
            if info is not None and inode(info) == self.inode:
                os.unlink(name, dir_fd=folder)


def remove_file(session: AccountSession, path: str) -> None:
    with session.usage.changing(), session.jail.folder_of(path) as (folder, name):
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        os.unlink(name, dir_fd=folder)
        if stat.S_ISREG(info.st_mode):
            session.usage.unlinked(info)


def rename_file(session: AccountSession, old: str, new: str, *, replace: bool) -> None:
    """Rename ``old`` to ``new``; an existing ``new`` is replaced only when ``replace``."""
    jail, usage = session.jail, session.usage
    with (
        usage.changing(),
        jail.folder_of(old) as (old_folder, old_name),
        jail.folder_of(new) as (new_folder, new_name),
    ):
        source = os.stat(old_name, dir_fd=old_folder, follow_symlinks=False)
        try:
            replaced: os.stat_result | None = os.stat(
                new_name, dir_fd=new_folder, follow_symlinks=False
            )
        except FileNotFoundError:
            replaced = None
        if replaced is not None and not replace:
            raise FileExistsError(errno.EEXIST, f"{new} exists")
        os.rename(old_name, new_name, src_dir_fd=old_folder, dst_dir_fd=new_folder)
        # onto itself (or another name of the same file) a rename changes nothing
        if replaced is not None and _another_file(replaced, source):
            usage.unlinked(replaced)


def _another_file(replaced: os.stat_result, source: os.stat_result) -> bool:
    return stat.S_ISREG(replaced.st_mode) and inode(replaced) != inode(source)
