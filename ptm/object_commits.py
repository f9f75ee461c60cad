"""Submitting and cancelling through a URL: commits built from objects, no index, no checkout.

ptm's cache clone of a registry URL (``ptm.registry_cache``) has no work tree, because checking
out a branch that anyone may push crafted trees to is how a crafted tree breaks a clone (or
writes through it). So a task or a cancellation sent through a URL becomes a commit built from
objects: the parent's trees are kept byte for byte (other people's entries, even crafted ones,
are not ours to change), only the folders on the way to the new files are written anew, and a
path that is already there, or there twice, is refused. The commit is signed like any other
(``git commit-tree -S``) and pushed; when someone pushed first, it is built again on theirs.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ptm.cancellation import Cancelled
from ptm.console import shorten
from ptm.errors import InvalidDocument, PtmError, RegistryError
from ptm.federation import RegistryRefs
from ptm.federation_trees import one_task_files
from ptm.gitrepo import GitRepo
from ptm.registry import PUSH_ATTEMPTS, _is_rejected_push, signing_options
from ptm.schema import dump_yaml, load_yaml_text, problems_in
from ptm.submission import Submitted, TaskDraft, write_task
from ptm.task import CANCEL_FILE, TASKS_DIR
from ptm.tree_paths import FOLDER_BYTES, Refused, Wanted, locate, root_trees
from ptm.treecheck import TREE_MODE, RawEntry, lookup, read_folder
from ptm.validation import problems_in_task_dir

RetryCallback = Callable[[int, str], None]
Nested = dict[str, "bytes | Nested"]


def submit_by_objects(
    repo: GitRepo,
    refs: RegistryRefs,
    draft: TaskDraft,
    *,
    sign_key: Path | None,
    on_retry: RetryCallback | None = None,
) -> Submitted:
    """Validate ``draft`` as ``ptm task submit`` would, then commit ``tasks/<id>/`` and push."""
    with tempfile.TemporaryDirectory(prefix="ptm-submit-") as scratch:
        task_dir = write_task(Path(scratch), draft)
        problems = problems_in_task_dir(task_dir, source=f"{TASKS_DIR}/{draft.task_id}")
        if problems:
            raise InvalidDocument(problems)
        prefix = f"{TASKS_DIR}/{draft.task_id}"
        files = {
            f"{prefix}/{path.relative_to(task_dir).as_posix()}": path.read_bytes()
            for path in sorted(task_dir.rglob("*"))
            if path.is_file()
        }
    tip = _tasks_tip(repo, refs)
    wanted = {0: Wanted(tip, (TASKS_DIR, draft.task_id), f"{refs.tasks_branch}:")}
    if locate(repo, wanted)[0] is not None:
        raise PtmError(
            f"{TASKS_DIR}/{draft.task_id}: a task with this id is in the registry already; "
            "pick a new id"
        )
    message = f"Submit task {draft.task_id}"
    sha, signed = commit_files(repo, refs, files, message, sign_key=sign_key, on_retry=on_retry)
    return Submitted(draft.task_id, sha, refs.tasks_branch, signed)


def cancel_by_objects(
    repo: GitRepo,
    refs: RegistryRefs,
    task_id: str,
    *,
    reason: str,
    sign_key: Path | None,
    on_retry: RetryCallback | None = None,
) -> Cancelled:
    """Refuse unknown and already cancelled tasks; else commit ``cancel.yaml`` and push it."""
    source = f"{TASKS_DIR}/{task_id}/{CANCEL_FILE}"
    files = one_task_files(repo, _tasks_tip(repo, refs), refs.tasks_branch, task_id, {})
    if files.task is None or isinstance(files.task, Refused):
        why = f": {files.task}" if files.task is not None else ""
        raise PtmError(f"no task {task_id!r} in the registry (branch {refs.tasks_branch}){why}")
    if files.cancel is not None:
        raise PtmError(f"task {task_id} is cancelled already{_cancel_reason(files.cancel)}")
    requested_by = repo.config_value("user.email")
    document: dict[str, Any] = {"ptm": 1, "reason": reason}
    if requested_by:
        document["requested_by"] = requested_by
    problems = problems_in(document, "cancel", source=source)
    if problems:
        raise InvalidDocument(problems)
    summary = " ".join(reason.split())[:300]
    sha, signed = commit_files(
        repo,
        refs,
        {source: dump_yaml(document).encode("utf-8")},
        f"Cancel task {task_id}\n\nReason: {summary}",
        sign_key=sign_key,
        on_retry=on_retry,
    )
    return Cancelled(task_id, sha, signed, requested_by)


def _cancel_reason(data: bytes | Refused) -> str:
    if isinstance(data, Refused):
        return ""
    try:
        reason = load_yaml_text(data, source=CANCEL_FILE).get("reason")
    except InvalidDocument:
        return ""
    return f" (reason: {shorten(str(reason), 200)})" if reason else ""


def _tasks_tip(repo: GitRepo, refs: RegistryRefs) -> str:
    tip = repo.rev_parse(refs.tasks_ref)
    if tip is None:
        raise PtmError(f"no branch {refs.tasks_branch!r} at {refs.remote}")
    return tip


def commit_files(
    repo: GitRepo,
    refs: RegistryRefs,
    files: Mapping[str, bytes],
    message: str,
    *,
    sign_key: Path | None,
    on_retry: RetryCallback | None = None,
) -> tuple[str, bool]:
    """Commit ``files`` (new paths only) on the tasks branch and push: (commit, signed?)."""
    config, sign = signing_options(repo, sign_key)
    for attempt in range(1, PUSH_ATTEMPTS + 1):
        parent = _tasks_tip(repo, refs)
        tree = add_files(repo, parent, files, where=f"{refs.tasks_branch}:")
        signing = ["-S"] if sign else []
        sha = repo.run("commit-tree", *signing, tree, "-p", parent, "-m", message, config=config)
        try:
            repo.run("push", "--quiet", refs.remote, f"{sha}:refs/heads/{refs.tasks_branch}")
            repo.run("update-ref", refs.tasks_ref, sha)
            return sha, sign
        except RegistryError as exc:
            if attempt == PUSH_ATTEMPTS or not _is_rejected_push(str(exc)):
                raise
            if on_retry is not None:
                on_retry(attempt, "the registry moved on; building the commit on it again")
        time.sleep(min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.5))
        repo.run("fetch", "--quiet", refs.remote, refs.refspecs()[0])
    raise AssertionError("unreachable")  # the last attempt returns or raises


def add_files(repo: GitRepo, parent: str, files: Mapping[str, bytes], *, where: str) -> str:
    """The root tree of ``parent`` with ``files`` added (none may exist yet): its id."""
    root = root_trees(repo, {0: parent})[0]
    if isinstance(root, Refused):
        raise PtmError(str(root))
    nested: Nested = {}
    for path, data in files.items():
        *folders, name = path.split("/")
        node = nested
        for folder in folders:
            child = node.setdefault(folder, {})
            assert isinstance(child, dict)
            node = child
        node[name] = data
    return _add(repo, root, nested, where)


def _add(repo: GitRepo, tree: str | None, files: Nested, where: str) -> str:
    raw = read_folder(repo, tree, where=where, max_bytes=FOLDER_BYTES) if tree else []
    entries = list(raw)
    for name, value in files.items():
        shown = f"{where}{name}" if where.endswith(":") else f"{where}/{name}"
        same = lookup(raw, name)
        if isinstance(value, bytes):
            if same:
                raise PtmError(f"{shown}: exists already; nothing was committed")
            oid = repo.run_with_input("hash-object", "-w", "--stdin", stdin=value).decode()
            entries.append(RawEntry(b"100644", name.encode(), oid.strip()))
            continue
        if len(same) > 1 or (same and same[0].mode != TREE_MODE):
            raise PtmError(f"{shown}: is there twice or is no folder; not writing into it")
        oid = _add(repo, same[0].oid if same else None, value, shown)
        entries = [e for e in entries if e.name != name.encode()]
        entries.append(RawEntry(TREE_MODE, name.encode(), oid))
    return _write_tree_object(repo, entries)


def _write_tree_object(repo: GitRepo, entries: list[RawEntry]) -> str:
    """A tree object of exactly ``entries`` in git's order (kept entries byte for byte)."""
    ordered = sorted(entries, key=lambda e: e.name + (b"/" if e.mode == TREE_MODE else b""))
    data = b"".join(e.mode + b" " + e.name + b"\0" + bytes.fromhex(e.oid) for e in ordered)
    # --literally: entries of others that git's own checks refuse are kept, not judged here
    out = repo.run_with_input(
        "hash-object", "-t", "tree", "--literally", "-w", "--stdin", stdin=data
    )
    return out.decode("ascii").strip()
