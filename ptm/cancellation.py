"""Cancelling a task: a signed commit of ``tasks/<id>/cancel.yaml``, pushed like a submission."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptm.console import shorten
from ptm.errors import InvalidDocument, PtmError
from ptm.federation import RegistryRefs
from ptm.gitrepo import GitRepo
from ptm.gittrees import read_blobs
from ptm.names import check_name
from ptm.registry import commit, push_with_rebase, signing_options
from ptm.schema import dump_yaml, load_yaml_text, problems_in
from ptm.task import CANCEL_FILE, TASK_FILE, TASKS_DIR
from ptm.treecheck import object_sizes

DEFAULT_REMOTE = "origin"
MAX_REASON_FILE_BYTES = 64 * 1024
RetryCallback = Callable[[int, str], None]


@dataclass(frozen=True)
class Cancelled:
    task_id: str
    commit: str
    signed: bool
    requested_by: str | None


def cancel_task(
    root: Path,
    task_id: str,
    *,
    reason: str,
    branch: str,
    sign_key: Path | None,
    remote: str = DEFAULT_REMOTE,
    on_retry: RetryCallback | None = None,
) -> Cancelled:
    """Refuse unknown and already cancelled tasks; else commit cancel.yaml and push it."""
    source = f"{TASKS_DIR}/{task_id}/{CANCEL_FILE}"
    check_name(task_id, kind="task id", source=source)
    repo = GitRepo(root)
    refs = RegistryRefs(remote, branch)
    repo.run("fetch", "--quiet", "--no-tags", remote, refs.refspecs()[0])
    _check_cancellable(repo, refs, task_id)
    if repo.is_ancestor("HEAD", refs.tasks_ref):  # a clone that is merely behind: catch up
        repo.run("merge", "--quiet", "--ff-only", refs.tasks_ref)
    requested_by = repo.config_value("user.email")
    document: dict[str, Any] = {"ptm": 1, "reason": reason}
    if requested_by:
        document["requested_by"] = requested_by
    problems = problems_in(document, "cancel", source=source)
    if problems:
        raise InvalidDocument(problems)
    _write_text(root / source, dump_yaml(document))
    _, signed = signing_options(repo, sign_key)
    summary = " ".join(reason.split())[:300]
    commit(repo, [source], f"Cancel task {task_id}\n\nReason: {summary}", sign_key=sign_key)
    push_with_rebase(repo, branch, sign_key=sign_key, remote=remote, on_retry=on_retry)
    return Cancelled(task_id, repo.run("rev-parse", "HEAD"), signed, requested_by)


def _check_cancellable(repo: GitRepo, refs: RegistryRefs, task_id: str) -> None:
    """Sizes first (``cat-file --batch-check``): a crafted multi-megabyte cancel.yaml is never
    read whole just to quote its reason."""
    task_dir = f"{TASKS_DIR}/{task_id}"
    specs = [
        f"{refs.tasks_ref}:{task_dir}/{TASK_FILE}",
        f"{refs.tasks_ref}:{task_dir}/{CANCEL_FILE}",
    ]
    task_info, cancel_info = object_sizes(repo, specs)
    if task_info is None:
        raise PtmError(f"no task {task_id!r} in the registry (branch {refs.tasks_branch})")
    if cancel_info is not None:
        reason = ""
        if cancel_info[0] == "blob" and cancel_info[1] <= MAX_REASON_FILE_BYTES:
            (cancel_data,) = read_blobs(repo, specs[1:])
            reason = _cancel_reason(cancel_data) if cancel_data is not None else ""
        raise PtmError(f"task {task_id} is cancelled already{reason}")


def _cancel_reason(data: bytes) -> str:
    try:
        reason = load_yaml_text(data, source=CANCEL_FILE).get("reason")
    except InvalidDocument:
        return ""
    return f" (reason: {shorten(str(reason), 200)})" if reason else ""


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
