"""Writing a task into a registry clone and submitting it (commit, sign, push)."""

from __future__ import annotations

import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptm.errors import InvalidDocument, PtmError, SignatureRequired
from ptm.gitrepo import GitRepo
from ptm.names import check_name
from ptm.registry import REGISTRY_FILE, TASKS_DIR, commit, push_with_rebase, signing_options
from ptm.registry_sites import load_sites, task_site_problems
from ptm.schema import dump_yaml, load_document, load_yaml_file, problems_in
from ptm.task import TASK_FILE
from ptm.validation import FILES_DIR, problems_in_task_dir


@dataclass(frozen=True)
class TaskDraft:
    """What ``ptm task new`` (or the Python API) asks for; becomes ``tasks/<id>/task.yaml``."""

    task_id: str
    image: str
    sites: tuple[str, ...]
    command: tuple[str, ...] | None = None
    config: Mapping[str, Any] | None = None
    timeout: int | None = None
    memory: str | None = None
    cpus: float | None = None
    deliver_sftp: str | None = None
    description: str | None = None
    files: tuple[Path, ...] = ()
    encrypt: bool = False

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = {"ptm": 1, "image": self.image, "sites": list(self.sites)}
        if self.command is not None:
            document["command"] = list(self.command)
        if self.config is not None:
            document["config"] = dict(self.config)
        if self.timeout is not None:
            document["timeout"] = self.timeout
        resources = {k: v for k, v in (("memory", self.memory), ("cpus", self.cpus)) if v}
        if resources:
            document["resources"] = resources
        if self.deliver_sftp is not None:
            document["deliver"] = {"sftp": self.deliver_sftp}
        if self.description is not None:
            document["description"] = self.description
        if self.encrypt:
            document["encrypt"] = True
        return document


def load_config_file(path: Path) -> dict[str, Any]:
    """A task's ``config`` from a YAML file, loaded with the same limits as a task."""
    return load_yaml_file(path, source=str(path))


def write_task(root: Path, draft: TaskDraft) -> Path:
    """Create ``tasks/<id>/`` in a clone; refuse an existing id or an invalid task."""
    source = f"{TASKS_DIR}/{draft.task_id}/{TASK_FILE}"
    check_name(draft.task_id, kind="task id", source=source)
    task_dir = root / TASKS_DIR / draft.task_id
    if task_dir.exists() or task_dir.is_symlink():
        raise PtmError(f"{TASKS_DIR}/{draft.task_id}: a task with this id exists already")
    document = draft.document()
    problems = problems_in(document, "task", source=source)
    if problems:
        raise InvalidDocument(problems)
    staging = task_dir.with_name(f".{draft.task_id}.new")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        _copy_input_files(draft.files, staging / FILES_DIR)
        (staging / TASK_FILE).write_text(dump_yaml(document), encoding="utf-8")
        staging.replace(task_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return task_dir


def _copy_input_files(files: tuple[Path, ...], dest: Path) -> None:
    for file in files:
        mode = file.lstat().st_mode if file.is_symlink() or file.exists() else 0
        if not stat.S_ISREG(mode):
            raise PtmError(f"{file}: --file takes regular files only (not links or folders)")
        check_name(file.name, kind="file name", source=str(file))
        dest.mkdir(exist_ok=True)
        if (dest / file.name).exists():
            raise PtmError(f"{file}: two input files are named {file.name!r}")
        shutil.copyfile(file, dest / file.name)


@dataclass(frozen=True)
class Submitted:
    task_id: str
    commit: str
    branch: str
    signed: bool


def check_task(root: Path, task_id: str) -> str:
    """Raise InvalidDocument unless ``tasks/<id>/`` is valid and names listed sites only."""
    task_dir = root / TASKS_DIR / task_id
    source = f"{TASKS_DIR}/{task_id}"
    check_name(task_id, kind="task id", source=source)
    if not task_dir.is_dir():
        raise PtmError(f"{source}: no such task folder; create it with 'ptm task new {task_id}'")
    problems = problems_in_task_dir(task_dir, source=source)
    problems += task_site_problems(task_dir, load_sites(root).names)
    if problems:
        raise InvalidDocument(problems)
    return source


def submit_task(
    root: Path,
    task_id: str,
    *,
    branch: str,
    sign_key: Path | None,
    remote: str = "origin",
    message: str | None = None,
    on_retry: Callable[[int, str], None] | None = None,
) -> Submitted:
    """Validate ``tasks/<id>/``, commit only it (signed when possible) and push to the registry."""
    source = check_task(root, task_id)
    repo = GitRepo(root)
    repo.run("fetch", "--quiet", remote, branch)
    if repo.list_tree(f"{remote}/{branch}", f"{source}/{TASK_FILE}"):
        raise PtmError(f"{source}: a task with this id is in the registry already; pick a new id")
    _, signed = signing_options(repo, sign_key)
    sha = commit(repo, [source], message or f"Submit task {task_id}", sign_key=sign_key)
    push_with_rebase(repo, branch, sign_key=sign_key, remote=remote, on_retry=on_retry)
    return Submitted(task_id, repo.run("rev-parse", "HEAD") or sha, branch, signed)


def signatures_required(root: Path) -> bool:
    """Whether the registry says its sites run only signed tasks (``require_signed_tasks``)."""
    document = load_document(root / REGISTRY_FILE, "registry", source=REGISTRY_FILE)
    return bool(document.get("require_signed_tasks", False))


COMMAND_OPTIONS = ("--sign-key KEY", "--allow-unsigned")


def refuse_unsigned(
    root: Path,
    task_id: str,
    *,
    sign_key: Path | None,
    action: str = "submitted",
    options: tuple[str, str] = COMMAND_OPTIONS,
) -> None:
    """Refuse before anything is committed: an unsigned task would be rejected everywhere and
    its id used up, since a task a site has acted on can never be submitted again."""
    refuse_unsigned_in(
        GitRepo(root),
        task_id,
        required=signatures_required(root),
        sign_key=sign_key,
        action=action,
        options=options,
    )


def refuse_unsigned_in(
    repo: GitRepo,
    task_id: str,
    *,
    required: bool,
    sign_key: Path | None,
    action: str,
    options: tuple[str, str],
) -> None:
    """SignatureRequired when ``required`` and neither ``sign_key`` nor git's own signing config
    (as ``repo`` sees it) would sign the commit."""
    if required and not signing_options(repo, sign_key)[1]:
        raise SignatureRequired(task_id, action=action, options=options)
