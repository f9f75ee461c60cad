"""The agent's mirror of the tasks branch: cheap head checks, fetches and what changed since."""

from __future__ import annotations

import io
import shutil
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ptm.errors import RegistryError, TamperingDetected
from ptm.gitrepo import FileChange, GitRepo, SignatureCheck
from ptm.gittrees import read_blobs
from ptm.registry import TASKS_DIR, clone, ssh_environment
from ptm.task import CANCEL_FILE, TASK_FILE

REMOTE = "origin"


@dataclass(frozen=True)
class TaskChange:
    """What happened to one task folder between two commits of the tasks branch."""

    task_id: str
    task_file: str | None  # "A", "M", "D" or None when task.yaml itself did not change
    other_files_changed: bool
    cancel_added: bool

    @property
    def is_new(self) -> bool:
        return self.task_file == "A"

    @property
    def alters_task(self) -> bool:
        return self.task_file in {"M", "D", "T"} or self.other_files_changed


def group_changes(changes: Iterable[FileChange]) -> list[TaskChange]:
    """Fold ``tasks/<id>/…`` file changes into one entry per task (pure)."""
    by_task: dict[str, dict[str, object]] = {}
    for change in changes:
        parts = change.path.split("/")
        if len(parts) < 3 or parts[0] != TASKS_DIR:
            continue
        entry = by_task.setdefault(parts[1], {"task": None, "other": False, "cancel": False})
        rest = "/".join(parts[2:])
        if rest == TASK_FILE:
            entry["task"] = change.status
        elif rest == CANCEL_FILE:
            entry["cancel"] = entry["cancel"] or change.status in {"A", "M"}
        else:
            entry["other"] = True
    return [
        TaskChange(task_id, _opt_str(e["task"]), bool(e["other"]), bool(e["cancel"]))
        for task_id, e in sorted(by_task.items())
    ]


def extract_task(archive: bytes, target: Path) -> None:
    """Unpack a ``git archive`` of one task folder: folders, regular files and symlinks (kept
    as links, never followed: validation refuses them), nothing outside ``target``."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            relative = member.name.strip("/")
            if not relative or member.name.startswith("/") or ".." in relative.split("/"):
                continue
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if member.isdir():
                path.mkdir(exist_ok=True)
            elif member.issym():
                path.symlink_to(member.linkname)
            elif member.isfile():
                source = tar.extractfile(member)
                if source is not None:
                    path.write_bytes(source.read())


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


class TasksMirror:
    """A clone of the registry's tasks branch inside the agent's work directory."""

    def __init__(self, path: Path, *, url: str, branch: str, ssh_key: Path | None) -> None:
        self.path = path
        self.url = url
        self.branch = branch
        self.ssh_key = ssh_key

    @property
    def repo(self) -> GitRepo:
        return GitRepo(self.path, env=ssh_environment(self.ssh_key))

    def ensure_clone(self) -> None:
        if (self.path / ".git").is_dir():
            self.repo.remove_stale_locks()
            return
        tmp = self.path.with_name(self.path.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        clone(self.url, tmp, branch=self.branch, ssh_key=self.ssh_key, checkout=False)
        tmp.rename(self.path)

    def remote_head(self) -> str | None:
        """One cheap ``ls-remote``: the branch head on the registry, or None if it is missing."""
        return GitRepo(self.path.parent, env=ssh_environment(self.ssh_key)).remote_head(
            self.url, self.branch
        )

    def fetch(self) -> str:
        refspec = f"+refs/heads/{self.branch}:refs/remotes/{REMOTE}/{self.branch}"
        self.repo.run("fetch", "--quiet", "--no-tags", REMOTE, refspec)
        head = self.repo.rev_parse(f"{REMOTE}/{self.branch}")
        if head is None:
            raise RegistryError(f"{self.url}: branch {self.branch!r} not found in the registry")
        return head

    def check_not_rewritten(self, processed: str | None, head: str) -> None:
        if processed is None or processed == head:
            return
        if self.repo.rev_parse(processed) is None or not self.repo.is_ancestor(processed, head):
            raise TamperingDetected(
                f"the tasks branch {self.branch!r} of {self.url} was rewritten: its new head "
                f"{head[:12]} does not contain {processed[:12]}, the last commit this site "
                "processed. The agent stops acting on the registry until an admin has looked "
                "(see 'ptm agent status'); history must only ever grow."
            )

    def changes(self, processed: str | None, head: str) -> list[TaskChange]:
        return group_changes(self.repo.changed_paths(processed, head, under=f"{TASKS_DIR}/"))

    def has_task(self, task_id: str, commit: str) -> bool:
        return bool(self.repo.list_tree(commit, f"{TASKS_DIR}/{task_id}/{TASK_FILE}"))

    def task_texts(self, task_ids: list[str], commit: str) -> dict[str, bytes]:
        """Each task's ``task.yaml`` at ``commit``, read by one git process for all of them."""
        specs = [f"{commit}:{TASKS_DIR}/{task_id}/{TASK_FILE}" for task_id in task_ids]
        blobs = read_blobs(self.repo, specs) if specs else []
        return {t: blob for t, blob in zip(task_ids, blobs, strict=True) if blob is not None}

    def materialize(self, task_id: str, commit: str, *, into: Path | None = None) -> Path:
        """``tasks/<id>/`` as it is at ``commit``, written to ``into/<id>`` (default: a folder
        beside the clone). The clone has no working tree: checking out a large registry on
        every cycle would cost time in proportion to its size."""
        target = (into or self.path.with_name("tasks")) / task_id
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        folder = f"{commit}:{TASKS_DIR}/{task_id}"
        if not self.repo.is_tree(folder):
            return target
        # Archiving the task's own tree, not the commit with a pathspec: git would otherwise
        # walk the whole registry tree to match the path.
        extract_task(self.repo.run_bytes("archive", "--format=tar", folder), target)
        return target

    def task_commit(self, task_id: str, head: str) -> str:
        """The newest commit up to ``head`` that touched ``tasks/<id>/``."""
        found = self.repo.run("rev-list", "-1", head, "--", f"{TASKS_DIR}/{task_id}/")
        return found or head

    def task_commits(self, task_id: str, head: str) -> list[str]:
        """Every commit up to ``head`` that touched ``tasks/<id>/`` (merges included)."""
        return self.repo.commits_touching(head, f"{TASKS_DIR}/{task_id}/")

    def signatures(self, commits: list[str], allowed_signers: Path) -> list[SignatureCheck]:
        return self.repo.signatures(commits, allowed_signers=allowed_signers)
