"""Collecting a container's output folder safely: regular files only, within limits.

What a container leaves in its output folder is hostile input. ``collect_outputs`` copies it
into a fresh folder, never following a symbolic link (every open is ``O_NOFOLLOW``, relative to
an already opened folder), and

- **skips, and reports**: symbolic links, hard links (a regular file with more than one name),
  named pipes, devices and sockets. Empty folders are dropped (git cannot hold them);
- **refuses the whole output** (``OutputRejected``, and nothing is left at ``dest_dir``) when a
  limit is broken (total bytes, number of entries, path depth) or when a name is one that git or
  a common filesystem mishandles (see ``name_problem``).

Files are written anew (mode 0644, folders 0755): no mode bit, owner or time of the container's
survives. Entries are visited in sorted order, so reports are deterministic.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, NoReturn

from ptm.errors import OutputRejected

MAX_NAME_BYTES = 255
# PATH_MAX is 4096 on Linux; outputs live below results/<task>/<site>/output/ in a clone
# somewhere, so a relative path keeps 512 bytes of room for that.
MAX_PATH_BYTES = 4096 - 512
GIT_NAMES = frozenset({".git", "git~1", ".gitignore", ".gitattributes", ".gitmodules"})
WINDOWS_DEVICES = frozenset(
    {"con", "prn", "aux", "nul"} | {f"{kind}{n}" for kind in ("com", "lpt") for n in range(1, 10)}
)
WINDOWS_RESERVED_CHARS = frozenset('<>:"|?*')
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
CHUNK = 1024**2

SKIPPED_KINDS = (
    (stat.S_ISLNK, "symbolic link, not followed"),
    (stat.S_ISFIFO, "named pipe (fifo)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


class CollectedFile(NamedTuple):
    path: str  # relative to the output folder, "/"-separated
    size: int
    sha256: str


class SkippedEntry(NamedTuple):
    path: str
    reason: str


@dataclass(frozen=True)
class OutputReport:
    files: tuple[CollectedFile, ...]
    skipped: tuple[SkippedEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class OutputLimits:
    max_bytes: int
    max_files: int  # entries reported: collected files plus skipped ones
    max_depth: int  # path components: "summary.csv" is 1, "plots/a.png" is 2


def collect_outputs(
    output_dir: Path, dest_dir: Path, *, max_bytes: int, max_files: int, max_depth: int
) -> OutputReport:
    """Copy the regular files of ``output_dir`` to ``dest_dir`` (which must not exist yet)."""
    if dest_dir.exists() or dest_dir.is_symlink():
        raise FileExistsError(f"{dest_dir} exists already")
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", dir=dest_dir.parent))
    try:
        collector = Collector(OutputLimits(max_bytes, max_files, max_depth), staging)
        report = collector.collect(output_dir)
        staging.chmod(0o755)
        staging.rename(dest_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def shown(path: str) -> str:
    """A path as a message may print it: quoted, with every odd character escaped."""
    return repr(path) if path.isprintable() else ascii(path)


def name_problem(name: str) -> str | None:
    """Why git or a common filesystem would mishandle this one path component, if it would."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    for char in name:
        if unicodedata.category(char) in INVISIBLE_CATEGORIES:
            return f"holds the control or invisible character U+{ord(char):04X}"
    if "\\" in name:
        return "holds a backslash (a folder separator on Windows)"
    if WINDOWS_RESERVED_CHARS.intersection(name):
        return 'holds one of < > : " | ? * (refused by Windows filesystems)'
    return special_name_problem(name)


def special_name_problem(name: str) -> str | None:
    folded = name.casefold()
    if folded in GIT_NAMES:
        return "is a name git treats specially"
    if name.startswith("-"):
        return "starts with '-' (command-line tools would read it as an option)"
    if name.endswith((".", " ")):
        return "ends with a dot or space (Windows filesystems drop them)"
    if folded.split(".", 1)[0] in WINDOWS_DEVICES:
        return "is a Windows device name"
    return None


class Collector:
    """One walk over one output folder into a staging folder."""

    def __init__(self, limits: OutputLimits, staging: Path) -> None:
        self.limits = limits
        self.staging = staging
        self.files: list[CollectedFile] = []
        self.skipped: list[SkippedEntry] = []
        self.total_bytes = 0
        self.folders = 0
        self.seen_folded: dict[str, str] = {}

    def collect(self, output_dir: Path) -> OutputReport:
        try:
            root = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return OutputReport((), ())
        except OSError as exc:
            raise OutputRejected(f"the output folder {output_dir} is not a folder: {exc}") from exc
        try:
            self.walk(root, ())
        finally:
            os.close(root)
        return OutputReport(tuple(self.files), tuple(self.skipped))

    def walk(self, folder_fd: int, parts: tuple[str, ...]) -> None:
        with os.scandir(folder_fd) as scan:
            names = sorted(entry.name for entry in scan)
        for name in names:
            self.visit(folder_fd, (*parts, name))

    def visit(self, folder_fd: int, parts: tuple[str, ...]) -> None:
        path = "/".join(parts)
        self.check_path(parts, path)
        info = os.stat(parts[-1], dir_fd=folder_fd, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            self.enter(folder_fd, parts, path)
        elif stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
            self.skip(path, f"hard link (one of {info.st_nlink} names of a file)")
        elif stat.S_ISREG(info.st_mode):
            self.copy(folder_fd, parts, path, info)
        else:
            self.skip(path, next((why for test, why in SKIPPED_KINDS if test(info.st_mode)), "?"))

    def check_path(self, parts: tuple[str, ...], path: str) -> None:
        problem = name_problem(parts[-1])
        if problem is not None:
            self.reject(path, f"the name {problem}")
        if len(parts) > self.limits.max_depth:
            self.reject(
                path, f"it is {len(parts)} levels deep, the limit is {self.limits.max_depth}"
            )
        if len(path.encode("utf-8")) > MAX_PATH_BYTES:
            self.reject(path, f"its path is longer than {MAX_PATH_BYTES} bytes")
        folded = unicodedata.normalize("NFC", path).casefold()
        if folded in self.seen_folded:
            other = shown(self.seen_folded[folded])
            self.reject(path, f"it differs from {other} only in case or Unicode normalisation")
        self.seen_folded[folded] = path

    def enter(self, folder_fd: int, parts: tuple[str, ...], path: str) -> None:
        self.folders += 1
        if self.folders > self.limits.max_files:
            self.reject(path, f"the output holds more than {self.limits.max_files} folders")
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        child = os.open(parts[-1], flags, dir_fd=folder_fd)
        try:
            self.walk(child, parts)
        finally:
            os.close(child)

    def skip(self, path: str, reason: str) -> None:
        self.count_entry(path)
        self.skipped.append(SkippedEntry(path, reason))

    def count_entry(self, path: str) -> None:
        if len(self.files) + len(self.skipped) >= self.limits.max_files:
            self.reject(path, f"the output holds more than {self.limits.max_files} entries")

    def copy(self, folder_fd: int, parts: tuple[str, ...], path: str, info: os.stat_result) -> None:
        self.count_entry(path)
        if self.total_bytes + info.st_size > self.limits.max_bytes:
            self.reject_size(path)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        source = os.open(parts[-1], flags, dir_fd=folder_fd)
        try:
            opened = os.fstat(source)
            if (opened.st_ino, opened.st_dev) != (info.st_ino, info.st_dev):
                self.reject(path, "it changed while it was being collected")
            size, digest = self.write(source, path)
        finally:
            os.close(source)
        self.files.append(CollectedFile(path, size, digest))

    def write(self, source: int, path: str) -> tuple[int, str]:
        target = self.staging.joinpath(path)
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        with open(target, "xb") as out:
            while chunk := os.read(source, CHUNK):
                size += len(chunk)
                self.total_bytes += len(chunk)
                if self.total_bytes > self.limits.max_bytes:
                    self.reject_size(path)
                digest.update(chunk)
                out.write(chunk)
        target.chmod(0o644)
        return size, digest.hexdigest()

    def reject_size(self, path: str) -> NoReturn:
        self.reject(path, f"the output is larger than {self.limits.max_bytes} bytes")

    @staticmethod
    def reject(path: str, why: str) -> NoReturn:
        raise OutputRejected(f"output file {shown(path)} refused: {why}")
