"""Where the tasks and the sites' reports are on a registry's branches, read through checks.

Every branch may be hostile: a site writes every byte of ``results/<site>``, anyone who may push
writes the tasks branch. So nothing here lists a tree with ``git ls-tree -r`` or reads a file by
``<rev>:<path>``: ``ptm.tree_paths`` walks each path one checked level at a time for all branches
together, and reads a file only once its size is known to be under its cap. A refused entry on
one branch becomes a problem of that branch (or of that task at that site), never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ptm.gitrepo import GitRepo
from ptm.names import is_valid_name
from ptm.result_layout import RESULTS_DIR, STATUS_FILE
from ptm.schema import MAX_DOCUMENT_BYTES
from ptm.task import CANCEL_FILE, TASK_FILE, TASKS_DIR
from ptm.tree_entries import FILE_MODES, TREE_MODE, RawEntry
from ptm.tree_paths import (
    Folder,
    Refused,
    Wanted,
    as_folder,
    child,
    follow,
    list_folders,
    locate,
    read_files,
    root_trees,
    step,
)

MAX_STATUS_BYTES = 256 * 1024
TASK_FOLDER_BYTES = 1024**2  # one task's folder listing; a results/<task> folder's too


@dataclass(frozen=True)
class Found:
    """The blob of one task's task.yaml (or one report's status.yaml), its cancel.yaml, or
    why they were refused."""

    oid: str | None
    cancel_oid: str | None
    problem: str | None = None


@dataclass(frozen=True)
class Listing:
    """What one branch holds for the overview: per task an id (or a problem), and problems
    of the branch itself (refused entries that name no task)."""

    found: Mapping[str, Found]
    problems: tuple[str, ...]


def branch_label(branch: str) -> str:
    return f"{branch}:"


def task_listing(repo: GitRepo, tip: str, branch: str) -> Listing:
    """Every ``tasks/<id>/`` of the tasks branch at ``tip``."""
    label = branch_label(branch)
    tasks = follow(repo, root_trees(repo, {0: tip}), [TASKS_DIR], {0: label})[0]
    where = child(label, TASKS_DIR)
    if tasks is None:
        return Listing({}, ())
    folder = _folder(repo, tasks, where)
    if isinstance(folder, Refused):
        return Listing({}, (str(folder),))
    trees, found, problems = _task_entries(folder, where)
    folders = list_folders(
        repo, trees, {t: child(where, t) for t in trees}, max_bytes=TASK_FOLDER_BYTES
    )
    for task_id, task_folder in folders.items():
        found[task_id] = _task_files(task_folder, child(where, task_id))
    return Listing(dict(sorted(found.items())), tuple(problems))


def _folder(repo: GitRepo, tree: str | Refused, where: str) -> Folder | Refused:
    if isinstance(tree, Refused):
        return tree
    return list_folders(repo, {0: tree}, {0: where})[0]


def _task_entries(folder: Folder, where: str) -> tuple[dict[str, str], dict[str, Found], list[str]]:
    """(task id → folder tree, task id → refused files, problems naming no task)."""
    trees: dict[str, str] = {}
    found: dict[str, Found] = {}
    problems: list[str] = []
    for name, entry in folder.entries.items():
        if not is_valid_name(name):
            problems.append(f"{child(where, name)}: not a valid task id; ignored")
        elif entry.mode != TREE_MODE:
            found[name] = Found(None, None, f"{child(where, name)}: is not a folder")
        else:
            trees[name] = entry.oid
    for name, why in folder.refused.items():
        if is_valid_name(name):
            found[name] = Found(None, None, f"{child(where, name)}: {why}")
        else:
            problems.append(f"{child(where, name)}: {why}; ignored")
    return trees, found, problems


def _task_files(folder: Folder | Refused, where: str) -> Found:
    if isinstance(folder, Refused):
        return Found(None, None, str(folder))
    task = _file_oid(folder.pick(TASK_FILE, child(where, TASK_FILE)), child(where, TASK_FILE))
    cancel = _file_oid(
        folder.pick(CANCEL_FILE, child(where, CANCEL_FILE)), child(where, CANCEL_FILE)
    )
    problem = next((str(r) for r in (task, cancel) if isinstance(r, Refused)), None)
    if task is None and problem is None:
        problem = f"{where}: has no {TASK_FILE}"
    return Found(
        task if isinstance(task, str) else None,
        cancel if isinstance(cancel, str) else None,
        problem,
    )


def _file_oid(entry: RawEntry | Refused | None, where: str) -> str | Refused | None:
    if entry is None or isinstance(entry, Refused):
        return entry
    if entry.mode not in FILE_MODES:
        return Refused(f"{where}: is not a regular file [mode]")
    return entry.oid


def status_listings(repo: GitRepo, tips: Mapping[str, str]) -> dict[str, Listing]:
    """For each site's results branch tip: ``results/<task>/<site>/status.yaml`` of each task.

    A site speaks only for itself: ``results/<task>/<other site>/`` on its branch is not read.
    """
    labels = {site: branch_label(f"{RESULTS_DIR}/{site}") for site in tips}
    results = follow(repo, root_trees(repo, tips), [RESULTS_DIR], labels)
    wheres = {site: child(labels[site], RESULTS_DIR) for site in tips}
    readable = {s: t for s, t in results.items() if isinstance(t, str)}
    folders = list_folders(repo, readable, wheres)
    problems: dict[str, list[str]] = {site: [] for site in tips}
    found: dict[str, dict[str, Found]] = {site: {} for site in tips}
    task_trees: dict[tuple[str, str], str] = {}
    for site, tree in results.items():
        folder = folders.get(site, tree)
        if isinstance(folder, Refused):
            problems[site].append(str(folder))
        elif isinstance(folder, Folder):
            trees, refused, branch_problems = _task_entries(folder, wheres[site])
            found[site].update(refused)
            problems[site] += branch_problems
            task_trees.update({(site, task): oid for task, oid in trees.items()})
    statuses = _status_entries(repo, task_trees, wheres)
    for (site, task), oid in statuses.items():
        if oid is not None:
            found[site][task] = oid
    return {
        site: Listing(dict(sorted(found[site].items())), tuple(problems[site])) for site in tips
    }


def _status_entries(
    repo: GitRepo, task_trees: Mapping[tuple[str, str], str], wheres: Mapping[str, str]
) -> dict[tuple[str, str], Found | None]:
    labels = {(site, task): child(wheres[site], task) for site, task in task_trees}
    sites = {key: key[0] for key in task_trees}
    site_trees = follow(repo, task_trees, [sites], labels)
    labels = {key: child(label, key[0]) for key, label in labels.items()}
    entries = step(repo, site_trees, STATUS_FILE, labels, max_bytes=TASK_FOLDER_BYTES)
    found: dict[tuple[str, str], Found | None] = {}
    for key, entry in entries.items():
        oid = _file_oid(entry, child(labels[key], STATUS_FILE))
        if isinstance(oid, Refused):
            found[key] = Found(None, None, str(oid))
        else:
            found[key] = Found(oid, None) if oid is not None else None
    return found


# -- one task ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskFileContents:
    """One task's files as the detail view reads them (None: not there)."""

    task: bytes | Refused | None
    cancel: bytes | Refused | None
    statuses: Mapping[str, bytes | Refused | None]  # site → its status.yaml


def one_task_files(
    repo: GitRepo, tip: str | None, branch: str, task_id: str, site_tips: Mapping[str, str]
) -> TaskFileContents:
    """task.yaml and cancel.yaml of ``tasks/<task_id>/`` on the tasks branch at ``tip``, and
    each site's ``results/<task_id>/<site>/status.yaml``: all walked together."""
    label = branch_label(branch)
    wanted: dict[str, Wanted] = {}
    if tip is not None:
        wanted = {name: Wanted(tip, (TASKS_DIR, task_id, name), label) for name in NAMES}
    sites = {f"site {s}": _site_path(s, t, task_id, STATUS_FILE) for s, t in site_tips.items()}
    wanted.update(sites)
    caps = {key: MAX_STATUS_BYTES if key in sites else MAX_DOCUMENT_BYTES for key in wanted}
    labels = {key: _shown(w) for key, w in wanted.items()}
    found = read_files(repo, locate(repo, wanted), labels, max_bytes=caps)
    statuses = {site: found[f"site {site}"] for site in site_tips}
    return TaskFileContents(found.get(TASK_FILE), found.get(CANCEL_FILE), statuses)


NAMES = (TASK_FILE, CANCEL_FILE)


def site_folders(
    repo: GitRepo, tips: Mapping[str, str], task_id: str
) -> dict[str, str | Refused | None]:
    """The tree of ``results/<task_id>/<site>/`` on each site's own branch (None: not there)."""
    wanted = {site: _site_path(site, tip, task_id) for site, tip in tips.items()}
    found = locate(repo, wanted)
    return {site: as_folder(found[site], _shown(w)) for site, w in wanted.items()}


def _site_path(site: str, tip: str, task_id: str, *more: str) -> Wanted:
    label = branch_label(f"{RESULTS_DIR}/{site}")
    return Wanted(tip, (RESULTS_DIR, task_id, site, *more), label)


def _shown(wanted: Wanted) -> str:
    return f"{wanted.label}{'/'.join(wanted.path)}"
