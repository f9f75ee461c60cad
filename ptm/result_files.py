"""Copying a task's result files from the results branches into a local folder, safely.

Everything on a results branch is untrusted. Each site's folder ``results/<task>/<site>/`` on
its own branch is read through ``ptm.treecheck`` (names, modes, duplicates, sizes, entry count
and depth checked before any file is read); only ``status.yaml``, ``log.txt``, ``result.age``
(an encrypted result, see ``ptm.sealed``) and ``output/…`` are copied, as regular
non-executable files, into a fresh folder made with no-follow semantics, which is then swapped
in as ``<out>/<site>``. A refused entry is not written and is listed; a
site whose folder cannot be read at all, whose ``status.yaml`` is refused, or that is over a cap
is refused as a whole (nothing written, the reason kept), and every other site is collected.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ptm.errors import PtmError
from ptm.federation import WAITING, RegistryRefs, TaskStatus, result_branches
from ptm.federation_trees import MAX_STATUS_BYTES, site_folders
from ptm.gitrepo import GitRepo
from ptm.names import is_valid_name
from ptm.result_layout import (
    LOG_FILE,
    OUTPUT_DIR,
    RESULTS_DIR,
    SEALED_FILE,
    STATUS_FILE,
    result_path,
)
from ptm.tree_entries import Caps, CheckedTree, TreeProblem
from ptm.tree_paths import Refused
from ptm.treecheck import TreeRefused, checked_tree, write_tree

MAX_LOG_BYTES = 16 * 1024**2
RESULT_CAPS = Caps(
    max_entries=5000,
    max_depth=16,
    max_blob_bytes=256 * 1024**2,  # one file in memory at a time: this is the most
    max_total_bytes=1024**3,
    max_tree_bytes=1024**2,
)
SITE_RULES = frozenset({"max-entries", "max-depth", "max-total-bytes"})  # refuse the whole site

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
    problem: str | None = None  # why nothing was collected from this site


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
    for reported in reporting:  # TaskStatus only holds valid names; checked again here
        if not is_valid_name(reported.site):
            raise PtmError(f"{reported.site!r} is not a valid site name; refusing to write it")
    tips = result_branches(repo, refs).tips
    folders = site_folders(repo, {s.site: tips[s.site] for s in reporting}, status.task_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    collected: dict[str, CollectedSite] = {}
    for site_status in reporting:
        site = site_status.site
        where = f"{RESULTS_DIR}/{site}:{result_path(status.task_id, site)}"
        try:
            collected[site] = _collect_site(repo, folders[site], where, out_dir / site)
        except (PtmError, OSError) as exc:
            collected[site] = _refused_site(out_dir / site, str(exc))
        collected[site] = replace(collected[site], site=site, state=site_status.state)
    return collected


def _collect_site(
    repo: GitRepo, folder: str | Refused | None, where: str, final: Path
) -> CollectedSite:
    if not isinstance(folder, str):
        return _refused_site(final, str(folder or f"{where}: not found"))
    try:
        tree = checked_tree(repo, folder, where=where, caps=RESULT_CAPS)
    except TreeRefused as exc:
        return _refused_site(final, str(exc))
    wanted, refused = _select(tree, where)
    fatal = [str(p) for p in tree.problems if p.rule in SITE_RULES or _is_status(p, where)]
    fatal += [r for r in refused if r.startswith(f"{where}/{STATUS_FILE}:")]
    if fatal:
        return _refused_site(final, fatal[0])
    _write_site_folder(repo, wanted, final)
    notes = (*(str(p) for p in tree.problems), *refused)
    files = tuple(sorted(e.path for e in wanted.files))
    return CollectedSite("", "", final, files, notes)


def _is_status(problem: TreeProblem, where: str) -> bool:
    return problem.path == f"{where}/{STATUS_FILE}"


def _select(tree: CheckedTree, where: str) -> tuple[CheckedTree, list[str]]:
    """The entries to write (status.yaml, log.txt, output/…, never executable), and why any
    of those was refused."""
    caps = {
        STATUS_FILE: MAX_STATUS_BYTES,
        LOG_FILE: MAX_LOG_BYTES,
        SEALED_FILE: RESULT_CAPS.max_blob_bytes,  # encrypted log and outputs (ptm.sealed)
    }
    kept = []
    refused = []
    for entry in tree.entries:
        top = entry.path.split("/", 1)[0]
        shown = f"{where}/{entry.path}"
        if entry.path in caps and entry.is_dir:
            refused.append(f"{shown}: is a folder, where a file should be [mode]")
        elif entry.path in caps and entry.size > caps[entry.path]:
            cap = caps[entry.path]
            refused.append(f"{shown}: is {entry.size} bytes, at most {cap} [max-bytes]")
        elif entry.path == OUTPUT_DIR and not entry.is_dir:
            refused.append(f"{shown}: is a file, where a folder should be [mode]")
        elif entry.path in caps or top == OUTPUT_DIR:
            kept.append(replace(entry, executable=False))
    return CheckedTree(tree.oid, tuple(kept)), refused


def _refused_site(final: Path, problem: str) -> CollectedSite:
    """Nothing is collected; an earlier collection of this site is removed, so that what is
    on disk never differs from what was judged."""
    _remove_existing(final)
    return CollectedSite("", "", final, (), (), problem)


def _write_site_folder(repo: GitRepo, tree: CheckedTree, final: Path) -> None:
    """Write ``tree`` into a fresh folder, then swap it in as ``final``."""
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        write_tree(repo, tree, staging / "site")
        _remove_existing(final)
        (staging / "site").rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_existing(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
