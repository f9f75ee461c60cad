"""Checks of a registry tree or one task folder, collecting every problem (``ptm validate``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ptm.errors import InvalidDocument, Problem
from ptm.names import is_valid_name
from ptm.registry import REGISTRY_FILE, TASKS_DIR
from ptm.schema import load_document
from ptm.task import CANCEL_FILE, TASK_FILE

FILES_DIR = "files"
TASK_ENTRIES = frozenset({TASK_FILE, CANCEL_FILE, FILES_DIR})
MAX_TASK_FILES_BYTES = 50 * 1024 * 1024
MAX_TASK_FILES = 500


def problems_in_registry(root: Path) -> list[Problem]:
    problems = _document_problems(root / REGISTRY_FILE, "registry", REGISTRY_FILE)
    tasks = root / TASKS_DIR
    if not tasks.is_dir():
        return problems
    for entry in sorted(tasks.iterdir()):
        source = f"{TASKS_DIR}/{entry.name}"
        if entry.name.startswith(".") and entry.is_file():
            continue
        if entry.is_symlink() or not entry.is_dir():
            problems.append(Problem(source, "(path)", "task-folder", "not a task folder"))
            continue
        problems += problems_in_task_dir(entry, source=source)
    return problems


def problems_in_task_dir(task_dir: Path, *, source: str | None = None) -> list[Problem]:
    """Every problem of one ``tasks/<id>/`` folder: its name, its documents and its files."""
    source = source or f"{TASKS_DIR}/{task_dir.name}"
    if not is_valid_name(task_dir.name):
        rule = "task id ^[a-z0-9][a-z0-9._-]{0,62}$"
        return [Problem(source, "(path)", "task-id", f"{task_dir.name!r} is not a valid {rule}")]
    problems: list[Problem] = []
    for entry in sorted(task_dir.iterdir()):
        if entry.name not in TASK_ENTRIES:
            message = f"unexpected entry {entry.name!r}; a task folder holds only " + ", ".join(
                sorted(TASK_ENTRIES)
            )
            problems.append(Problem(f"{source}/{entry.name}", "(path)", "task-layout", message))
    if not (task_dir / TASK_FILE).exists() and not (task_dir / TASK_FILE).is_symlink():
        problems.append(Problem(f"{source}/{TASK_FILE}", "(file)", "required", "missing"))
    else:
        problems += _document_problems(task_dir / TASK_FILE, "task", f"{source}/{TASK_FILE}")
    if (task_dir / CANCEL_FILE).exists() or (task_dir / CANCEL_FILE).is_symlink():
        problems += _document_problems(task_dir / CANCEL_FILE, "cancel", f"{source}/{CANCEL_FILE}")
    if (task_dir / FILES_DIR).exists() or (task_dir / FILES_DIR).is_symlink():
        problems += _files_problems(task_dir / FILES_DIR, f"{source}/{FILES_DIR}")
    return problems


def _document_problems(path: Path, schema: str, source: str) -> list[Problem]:
    try:
        load_document(path, schema, source=source)
    except InvalidDocument as exc:
        return list(exc.problems)
    return []


def _files_problems(files_dir: Path, source: str) -> list[Problem]:
    if files_dir.is_symlink() or not files_dir.is_dir():
        return [Problem(source, "(path)", "task-files", "must be a folder, not a link or file")]
    problems: list[Problem] = []
    total = count = 0
    for folder, dirs, names in os.walk(files_dir):
        for name in sorted(dirs + names):
            path = Path(folder) / name
            shown = f"{source}/{path.relative_to(files_dir).as_posix()}"
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                problems.append(
                    Problem(shown, "(path)", "no-symlinks", "symbolic links are not allowed")
                )
            elif stat.S_ISREG(mode):
                total += path.lstat().st_size
                count += 1
            elif not stat.S_ISDIR(mode):
                problems.append(Problem(shown, "(path)", "regular-files", "not a regular file"))
    if total > MAX_TASK_FILES_BYTES:
        message = f"{total} bytes in all; at most {MAX_TASK_FILES_BYTES} (use a data service)"
        problems.append(Problem(source, "(size)", "max-bytes", message))
    if count > MAX_TASK_FILES:
        message = f"{count} files; at most {MAX_TASK_FILES}"
        problems.append(Problem(source, "(count)", "max-files", message))
    return problems
