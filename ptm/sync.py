"""The agent's mirror of the tasks branch: cheap head checks, fetches, and what changed since.

Nothing on the tasks branch is trusted. What changed is found by comparing the raw ``tasks/``
folders of two commits (``TasksIndex``, read through ``ptm.treecheck``), so a crafted name
(``..``, ``.git``, a newline, invalid UTF-8, two entries with one name) is seen exactly as it is
and refused for that entry alone. A task's folder is read as a checked listing plus the texts of
``task.yaml`` and ``cancel.yaml`` (``TaskSnapshot``), in memory; nothing is written to disk here.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ptm.errors import Problem, RegistryError, TamperingDetected
from ptm.gitrepo import GitRepo
from ptm.names import is_valid_name
from ptm.ref_poll import BranchPoll, SessionCommand, repository_path, upload_pack_command
from ptm.registry import TASKS_DIR, clone, ssh_environment
from ptm.schema import FILE_PATH
from ptm.ssh_share import SharedConnection
from ptm.task import CANCEL_FILE, TASK_FILE
from ptm.treecheck import (
    TREE_MODE,
    Caps,
    CheckedTree,
    RawEntry,
    TreeRefused,
    in_git_order,
    lookup,
    read_folder,
    read_raw,
    read_trees,
    root_tree,
    shown_name,
)
from ptm.validation import FILES_DIR, MAX_TASK_FILES, MAX_TASK_FILES_BYTES

REMOTE = "origin"
TASKS_LISTING_BYTES = 64 * 1024**2
ROOT_LISTING_BYTES = 1024**2
TASK_DOCUMENT_BYTES = 1024**2
TASK_CAPS = Caps(
    max_entries=MAX_TASK_FILES + 8,
    max_depth=16,
    max_blob_bytes=MAX_TASK_FILES_BYTES,
    max_total_bytes=MAX_TASK_FILES_BYTES + 2 * TASK_DOCUMENT_BYTES,
    max_tree_bytes=1024**2,
)
PATH = "(path)"
TASK_ENTRIES = {TASK_FILE: False, CANCEL_FILE: False, FILES_DIR: True}  # name -> is a folder


@dataclass(frozen=True)
class TasksIndex:
    """The raw entries of ``tasks/`` at one commit, by exact name (crafted trees repeat some)."""

    commit: str
    entries: Mapping[bytes, tuple[RawEntry, ...]]


@dataclass(frozen=True)
class TaskChange:
    """One name in ``tasks/`` whose entries differ between two commits."""

    name: bytes
    before: tuple[RawEntry, ...]
    after: tuple[RawEntry, ...]

    @property
    def task_id(self) -> str | None:
        """The name as a task id, when it is a valid one."""
        try:
            text = self.name.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return text if is_valid_name(text) else None

    @property
    def shown(self) -> str:
        return f"{TASKS_DIR}/{shown_name(self.name)}"

    @property
    def is_new(self) -> bool:
        return not self.before and bool(self.after)


def diff_index(old: TasksIndex | None, new: TasksIndex) -> list[TaskChange]:
    """Every name whose entries changed from ``old`` (None: nothing) to ``new`` (pure)."""
    before = old.entries if old is not None else {}
    names = sorted(set(before) | set(new.entries))
    changes = []
    for name in names:
        was, now = before.get(name, ()), new.entries.get(name, ())
        if was != now:
            changes.append(TaskChange(name, was, now))
    return changes


@dataclass(frozen=True)
class Polled:
    """A poll's answer: the branch's head on the registry (None: no such branch), and whether
    it was fetched already."""

    head: str | None
    fetched: bool


@dataclass(frozen=True)
class TaskSnapshot:
    """One task folder at one commit: its checked listing and documents, and every problem."""

    task_id: str
    commit: str
    tree: CheckedTree | None
    problems: tuple[Problem, ...]
    task_text: bytes | None
    cancel_text: bytes | None

    @property
    def files(self) -> CheckedTree | None:
        """The checked ``files/`` folder, when the task has one."""
        if self.tree is None or self.tree.get(FILES_DIR) is None:
            return None
        return self.tree.under(FILES_DIR)

    @property
    def file_names(self) -> tuple[str, ...]:
        files = self.files
        return tuple(e.path for e in files.files) if files is not None else ()


def layout_problems(task_id: str, tree: CheckedTree) -> list[Problem]:
    """What a task folder may hold: task.yaml, cancel.yaml (files) and files/ (a folder)."""
    where = f"{TASKS_DIR}/{task_id}"
    problems = [Problem(p.path, PATH, p.rule, p.message) for p in tree.problems]
    for entry in tree.entries:
        wants_dir = TASK_ENTRIES.get(entry.path)
        if "/" in entry.path:
            continue
        if wants_dir is None:
            allowed = ", ".join(sorted(TASK_ENTRIES))
            message = f"unexpected entry; a task folder holds only {allowed}"
            problems.append(Problem(f"{where}/{entry.path}", PATH, "task-layout", message))
        elif wants_dir != entry.is_dir:
            message = "must be a folder" if wants_dir else "must be a file"
            problems.append(Problem(f"{where}/{entry.path}", PATH, "task-layout", message))
    for name in (TASK_FILE, CANCEL_FILE):
        document = tree.get(name)
        if document is not None and document.size > TASK_DOCUMENT_BYTES:
            message = f"is {document.size} bytes, at most {TASK_DOCUMENT_BYTES}"
            problems.append(Problem(f"{where}/{name}", FILE_PATH, "max-bytes", message))
    files = [e for e in tree.files if e.path.startswith(f"{FILES_DIR}/")]
    if len(files) > MAX_TASK_FILES:
        message = f"{len(files)} files; at most {MAX_TASK_FILES}"
        problems.append(Problem(f"{where}/{FILES_DIR}", "(count)", "max-files", message))
    return problems


class TasksMirror:
    """A clone of the registry's tasks branch (no working tree) in the agent's work directory."""

    def __init__(
        self,
        path: Path,
        *,
        url: str,
        branch: str,
        ssh_key: Path | None,
        known_hosts: Path | None = None,
    ) -> None:
        self.path = path
        self.url = url
        self.branch = branch
        self.ssh_key = ssh_key
        self.known_hosts = known_hosts
        self._index: TasksIndex | None = None  # the last one read: the next cycle's "before"
        self._fetched: str | None = None  # the commit the last fetch brought, peeled by git
        self.share: SharedConnection | None = None  # one SSH connection for every call
        self._branch_poll: BranchPoll | None = None

    def _env(self) -> dict[str, str]:
        env = ssh_environment(self.ssh_key, self.known_hosts)
        return self.share.environment(env) if self.share is not None else env

    @property
    def repo(self) -> GitRepo:
        return GitRepo(self.path, env=self._env())

    def ensure_clone(self) -> None:
        if (self.path / ".git").is_dir():
            self.repo.remove_stale_locks()
            return
        tmp = self.path.with_name(self.path.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        clone(
            self.url,
            tmp,
            branch=self.branch,
            ssh_key=self.ssh_key,
            checkout=False,
            known_hosts=self.known_hosts,
        )
        tmp.rename(self.path)

    def remote_head(self) -> str | None:
        """One cheap ``ls-remote``: the branch head on the registry, or None if it is missing."""
        return GitRepo(self.path.parent, env=self._env()).remote_head(self.url, self.branch)

    def poll(self, processed: str | None) -> Polled:
        """The registry's head for a cycle. Over a shared SSH connection an ``ls-refs`` on the
        master answers (no process started) and only a head other than ``processed`` is
        fetched; without an answer the fetch is the poll. Otherwise one ``ls-remote``."""
        if self.share is None:
            return Polled(self.remote_head(), fetched=False)
        answer = self.branch_poll.head()
        if answer is not None and answer.oid is not None and answer.oid == processed:
            return Polled(answer.oid, fetched=False)
        return Polled(self.fetch(polling=True), fetched=True)

    @property
    def branch_poll(self) -> BranchPoll:
        if self._branch_poll is None:
            self._branch_poll = BranchPoll(self.url, self.branch, self.session_command)
        return self._branch_poll

    def session_command(self) -> SessionCommand | None:
        """How ls-refs reaches git-upload-pack: over the shared connection's master."""
        path = repository_path(self.url)
        if self.share is None or path is None or not self.share.usable:
            return None
        env = ("GIT_PROTOCOL=version=2",)
        return SessionCommand(self.share.socket, upload_pack_command(path), env)

    def fetch(self, *, polling: bool = False) -> str:
        """Fetch the tasks branch; ``polling``: as the poll itself, which most often brings
        nothing, so it writes no FETCH_HEAD and leaves git's upkeep to ``upkeep``."""
        refspec = f"+refs/heads/{self.branch}:refs/remotes/{REMOTE}/{self.branch}"
        if polling:
            self.repo.run(
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--",
                self.url,  # named in a failure's message, like ls-remote's
                refspec,
                config={"maintenance.auto": "false"},
            )
        else:
            self.repo.run("fetch", "--quiet", "--no-tags", REMOTE, refspec)
        loose = self._loose_ref(f"refs/remotes/{REMOTE}/{self.branch}") if polling else None
        if loose is not None and loose == self._fetched:
            return loose  # an idle poll: the same commit as last time, no git process
        head = self.repo.rev_parse(f"{REMOTE}/{self.branch}")  # a commit (git peels, refuses)
        if head is None:
            raise RegistryError(f"{self.url}: branch {self.branch!r} not found in the registry")
        self._fetched = head
        return head

    def _loose_ref(self, ref: str) -> str | None:
        """The object id a fetch just wrote into a loose ref file (None when the ref is packed
        or the file is not a plain object id); trusted only when it is the commit
        ``rev_parse`` gave last time."""
        try:
            text = (self.path / ".git" / ref).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if len(text) == 40 and all(c in "0123456789abcdef" for c in text) else None

    def upkeep(self) -> None:
        """git's automatic upkeep (packing loose objects) that a polling fetch skipped."""
        self.repo.run("maintenance", "run", "--auto", "--quiet")

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

    # ---- what is there -----------------------------------------------------------------------

    def index(self, commit: str) -> TasksIndex:
        """``tasks/`` at ``commit``; TreeRefused when its tree has no single such folder."""
        if self._index is not None and self._index.commit == commit:
            return self._index
        repo = self.repo
        top = read_folder(repo, root_tree(repo, commit), where="/", max_bytes=ROOT_LISTING_BYTES)
        if not in_git_order(top):
            raise TreeRefused(f"commit {commit[:12]}: its top folder is not in git's order")
        found = lookup(top, TASKS_DIR)
        entries: dict[bytes, tuple[RawEntry, ...]] = {}
        if len(found) > 1 or (found and found[0].mode != TREE_MODE):
            raise TreeRefused(
                f"commit {commit[:12]}: {TASKS_DIR} is not one folder ({len(found)} entries)"
            )
        if found:
            listing = read_folder(
                repo, found[0].oid, where=TASKS_DIR, max_bytes=TASKS_LISTING_BYTES
            )
            if not in_git_order(listing):
                raise TreeRefused(
                    f"commit {commit[:12]}: {TASKS_DIR}/ is not in git's order (a crafted tree "
                    "that could hide a change from the signature checks)"
                )
            for entry in listing:
                entries[entry.name] = (*entries.get(entry.name, ()), entry)
        self._index = TasksIndex(commit, entries)
        return self._index

    def changes(self, processed: str | None, head: str) -> list[TaskChange]:
        old = self.index(processed) if processed is not None else None
        return diff_index(old, self.index(head))

    def snapshots(self, index: TasksIndex, task_ids: Sequence[str]) -> dict[str, TaskSnapshot]:
        """Each task's folder at ``index.commit``, checked, with its documents read (few git
        processes for any number of tasks)."""
        result: dict[str, TaskSnapshot] = {}
        folders: list[tuple[str, str]] = []
        for task_id in task_ids:
            entries = index.entries.get(task_id.encode(), ())
            problem = _folder_problem(task_id, entries)
            if problem is not None:
                result[task_id] = TaskSnapshot(task_id, index.commit, None, (problem,), None, None)
            else:
                folders.append((task_id, entries[0].oid))
        trees = read_trees(
            self.repo, [(f"{TASKS_DIR}/{t}", oid) for t, oid in folders], caps=TASK_CAPS
        )
        wanted = [
            entry
            for tree in trees
            for name in (TASK_FILE, CANCEL_FILE)
            if (entry := tree.get(name)) is not None
            and not entry.is_dir
            and entry.size <= TASK_DOCUMENT_BYTES
        ]
        blobs = read_raw(self.repo, [e.oid for e in wanted])
        texts = {e.oid: data for e, data in zip(wanted, blobs, strict=True)}
        for (task_id, _), tree in zip(folders, trees, strict=True):
            task_entry, cancel_entry = tree.get(TASK_FILE), tree.get(CANCEL_FILE)
            result[task_id] = TaskSnapshot(
                task_id,
                index.commit,
                tree,
                tuple(layout_problems(task_id, tree)),
                texts.get(task_entry.oid) if task_entry is not None else None,
                texts.get(cancel_entry.oid) if cancel_entry is not None else None,
            )
        return result

    def snapshot_at(self, task_id: str, commit: str) -> TaskSnapshot:
        """One task's folder at ``commit`` (for approvals and resuming)."""
        return self.snapshots(self.index(commit), [task_id])[task_id]

    def task_commit(self, task_id: str, head: str) -> str:
        """The newest commit up to ``head`` that touched ``tasks/<id>/``."""
        found = self.repo.run("rev-list", "-1", head, "--", f"{TASKS_DIR}/{task_id}/")
        return found or head


def _folder_problem(task_id: str, entries: tuple[RawEntry, ...]) -> Problem | None:
    where = f"{TASKS_DIR}/{task_id}"
    if not entries:
        return Problem(where, PATH, "exists", "no such task folder")
    if len(entries) > 1:
        message = f"appears {len(entries)} times in {TASKS_DIR}/ (a crafted tree)"
        return Problem(where, PATH, "duplicate", message)
    if entries[0].mode != TREE_MODE:
        message = f"is not a folder (mode {shown_name(entries[0].mode)})"
        return Problem(where, PATH, "task-folder", message)
    return None
