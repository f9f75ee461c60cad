"""An SFTP account's jail and quota, on plain file descriptors (no paramiko here).

Every path a client names is split into names, ``..`` is refused, and the folders are walked one
``openat`` at a time with ``O_NOFOLLOW``, so neither a ``..`` nor a symlink planted in the jail
(by anyone) leads outside it. ``max_file_bytes`` and the account's ``quota_bytes`` (counting what
the folder already held at start) are enforced on every write.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# -- jail and quota -----------------------------------------------------------------------------

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def regular_file_bytes(folder: int, name: str) -> int:
    """Size of ``name`` in ``folder`` when it is a regular file, else 0 (never follows links)."""
    try:
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def stored_bytes(root: Path) -> int:
    """Bytes held by the regular files below ``root``, not following symlinks."""
    total = 0
    for folder, _, files in os.walk(root):
        infos = [(Path(folder) / name).lstat() for name in files]
        total += sum(info.st_size for info in infos if stat.S_ISREG(info.st_mode))
    return total


class Usage:
    """Bytes one account holds, shared by all its sessions; thread-safe."""

    def __init__(self, quota_bytes: int, used_bytes: int) -> None:
        self.quota_bytes = quota_bytes
        self.used_bytes = used_bytes
        self._lock = threading.Lock()

    def reserve(self, amount: int) -> bool:
        with self._lock:
            if self.used_bytes + amount > self.quota_bytes:
                return False
            self.used_bytes += amount
            return True

    def release(self, amount: int) -> None:
        with self._lock:
            self.used_bytes = max(0, self.used_bytes - amount)


@dataclass(frozen=True)
class AccountSession:
    """What an SFTP session of one logged-in account may touch."""

    account: str
    jail: Jail
    usage: Usage
    max_file_bytes: int
