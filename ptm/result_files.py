"""Copying a task's result files from the results branches into a local folder, safely.

Everything on a results branch is untrusted: only ``status.yaml``, ``log.txt`` and ``output/…``
of a site's own folder are copied, only regular files, only paths made of plain parts (no empty,
``.`` or ``..`` part, no control characters); each site's folder is built afresh next to its
final place and then swapped in, so nothing is ever written through a link or outside the folder.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ptm.errors import PtmError
from ptm.federation import WAITING, RegistryRefs, TaskStatus
from ptm.gitrepo import GitRepo
from ptm.gittrees import TreeEntry, list_trees, read_blobs
from ptm.ledger import LOG_FILE, OUTPUT_DIR, RESULTS_DIR, STATUS_FILE, result_path
from ptm.names import is_valid_name

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
