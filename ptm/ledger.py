"""A site's results branch (``results/<site>``): its append-only ledger of decisions and results.

The agent keeps the branch in a bare repository of its own and writes its objects itself
(``ptm.journal_objects``: commits signed with ``ssh-keygen`` as git signs them; big files
through ``hash-object``), then moves the branch as ``git update-ref`` does (``move_ref``, or
``update-ref`` itself for a reftable or a reflog): no working tree, so nothing the registry
holds is ever checked out onto the site's disk, and a record exists only once the branch has
moved (a kill before that loses nothing: the task is simply handled again). Only this agent
writes its local branch, so that branch is its journal.

The copy on the registry is *not* trusted: anyone may push to it where the host does not protect
it. The agent never fetches it into its journal. When a push is refused because the registry's
branch holds commits this agent did not make, it pushes a merge whose tree is exactly its own
journal (foreign changes are undone, their commits stay in history for the audit) and reports
each foreign commit as tampering. A fresh work directory adopts the registry's branch once, and
records it cannot prove it wrote (commits not signed with the site key) are known, so their
tasks are never run again, but never acted on.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ptm.adoption import adoption_unproven, status_blobs
from ptm.errors import InvalidDocument, RegistryError
from ptm.gitrepo import GitRepo, clear_stale_locks
from ptm.journal_objects import (
    JournalTrees,
    can_move_refs,
    commit_object,
    move_ref,
    signed_commit_object,
    ssh_signature,
    write_object,
)
from ptm.lease import (
    AGENT_TRAILER,
    LEASE_RENEW_S,
    LEASE_TRAILER,
    RELEASED,
    LeaseHeld,
    held_by_other,
    read_tip,
)
from ptm.record_change import RecordChange, record_change
from ptm.registry import ssh_environment
from ptm.result_layout import RESULTS_DIR, result_path, results_branch
from ptm.schema import load_yaml_text
from ptm.ssh_share import SharedConnection
from ptm.status import StatusRecord
from ptm.tree_paths import read_blobs as read_capped_blobs
from ptm.workdir import write_atomically

REMOTE = "origin"
UNPROVEN_FILE = "unproven.json"
LEGACY_CLONE = "results"
MAX_STATUS_BYTES = 256 * 1024
ZERO = "0" * 40


class Ledger:
    """The results branch of one site, in a bare repository in the agent's work directory."""

    def __init__(
        self,
        path: Path,
        *,
        url: str,
        site: str,
        ssh_key: Path | None,
        sign_key: Path | None,
        known_hosts: Path | None = None,
    ) -> None:
        self.path = path
        self.url = url
        self.site = site
        self.branch = results_branch(site)
        self.ref = f"refs/heads/{self.branch}"
        self.remote_ref = f"refs/remotes/{REMOTE}/{self.branch}"
        self.sign_key = sign_key
        self._ssh_key = ssh_key
        self._known_hosts = known_hosts
        self._lock = threading.RLock()
        self._records: dict[str, str] | None = None  # task id -> status.yaml blob, from git
        self._unproven: dict[str, str] | None = None
        self._unpushed: bool | None = None  # None: not known yet, ask git
        self._trees = JournalTrees(path, GitRepo(path))
        self._tip: str | None = None  # the local branch's commit, once asked (only we move it)
        self._tip_tree: str | None = None
        self._plain_refs: bool | None = None  # refs are files this object may write itself
        self._tip_known = False
        self._push_lock = threading.Lock()
        self._last_commit: float | None = None  # wall clock; None: ask git once
        self._identity_line = f"{_committer_name(site)} <{_committer_email(site)}>"
        self.identity = "unknown"  # set from the work directory (ptm.lease.agent_identity)
        self.on_foreign: Callable[[str], None] | None = None  # told of each foreign commit
        self.share: SharedConnection | None = None  # one SSH connection for every call

    @property
    def repo(self) -> GitRepo:
        env = ssh_environment(self._ssh_key, self._known_hosts)
        return GitRepo(self.path, env=self.share.environment(env) if self.share else env)

    @property
    def exists(self) -> bool:
        return (self.path / "HEAD").is_file()

    # ---- setting up -------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the bare repository (adopting the registry's branch once) or clear the lock
        files a killed agent left in it."""
        if self.exists:
            branch_lock = f"refs/heads/{RESULTS_DIR}/{self.site}.lock"
            legacy_index = "ptm-index.lock"  # the private index of ptm before journal_objects
            locks = [legacy_index, "packed-refs.lock", "config.lock", branch_lock]
            clear_stale_locks(self.path, locks)
            return
        partial = self.path.with_name(self.path.name + ".partial")
        _remove_tree(partial)
        partial.mkdir(parents=True, mode=0o700)
        repo = GitRepo(partial, env=ssh_environment(self._ssh_key, self._known_hosts))
        repo.run("init", "--quiet", "--bare", f"--initial-branch={self.branch}")
        repo.run("remote", "add", REMOTE, self.url)
        repo.run("config", f"remote.{REMOTE}.fetch", f"+{self.ref}:{self.remote_ref}")
        repo.run("config", "user.name", _committer_name(self.site))
        repo.run("config", "user.email", _committer_email(self.site))
        legacy = self.path.with_name(LEGACY_CLONE)
        if (legacy / ".git").is_dir():  # ptm 0.1.0's results clone: this agent's own journal
            repo.run("fetch", "--quiet", "--no-tags", str(legacy), f"+{self.ref}:{self.ref}")
        elif self.branch in repo.remote_branches(REMOTE, self.branch):
            repo.run("fetch", "--quiet", "--no-tags", REMOTE)
            tip = repo.run("rev-parse", self.remote_ref)
            unproven = adoption_unproven(repo, tip, self.site, self.sign_key)
            write_atomically(partial / UNPROVEN_FILE, json.dumps(unproven, indent=1) + "\n")
            repo.run("update-ref", self.ref, tip)
        partial.rename(self.path)

    # ---- reading (own journal only) ---------------------------------------------------------

    def _known(self) -> dict[str, str]:
        if self._records is None:
            self._records = status_blobs(self.repo, self.ref, self.site)
        return self._records

    def unproven(self) -> dict[str, str]:
        """Tasks whose record came with an adopted branch and is not provably this agent's."""
        if self._unproven is None:
            path = self.path / UNPROVEN_FILE
            loaded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            self._unproven = {str(k): str(v) for k, v in loaded.items()}
        return self._unproven

    def is_proven(self, task_id: str) -> bool:
        with self._lock:
            blob = self._known().get(task_id)
            return blob is not None and self.unproven().get(task_id) != blob

    def status_of(self, task_id: str) -> StatusRecord | None:
        """The last record this branch holds for ``task_id`` (proven or not: see is_proven)."""
        with self._lock:
            blob = self._known().get(task_id)
        if blob is None:
            return None
        (data,) = self._read([blob])
        return _parse_record(data, f"{self.branch}:{result_path(task_id, self.site)}")

    def _read(self, blobs: list[str]) -> list[bytes | None]:
        """Status blobs, sizes checked first: an adopted branch's record can be of any size,
        and one over MAX_STATUS_BYTES is never read into memory (it counts as unreadable)."""
        found = read_capped_blobs(self.repo, blobs, max_bytes=MAX_STATUS_BYTES)
        return [data if isinstance(data, bytes) else None for data in found]

    def records(self, task_ids: list[str]) -> dict[str, StatusRecord]:
        with self._lock:
            known = self._known()
            wanted = [(t, known[t]) for t in task_ids if t in known]
        found = {}
        for (task_id, _), data in zip(wanted, self._read([b for _, b in wanted]), strict=True):
            record = _parse_record(data, f"{self.branch}:{result_path(task_id, self.site)}")
            if record is not None:
                found[task_id] = record
        return found

    def all_records(self) -> list[StatusRecord]:
        """Every task this site has a status for (for ``ptm agent status``, not for cycles)."""
        if not self.exists:
            return []
        records = self.records(sorted(self._known()))
        return [records[t] for t in sorted(records)]

    def open_tasks(self) -> list[StatusRecord]:
        """Tasks whose last recorded state is not final."""
        return [r for r in self.all_records() if not r.is_final]

    # ---- writing ----------------------------------------------------------------------------

    def record(
        self,
        status: StatusRecord,
        *,
        log: bytes | None = None,
        outputs: Path | None = None,
        message: str | None = None,
        remove_outputs: bool = False,
        note: str | None = None,
        sealed: Path | None = None,
    ) -> str:
        """Commit ``status.yaml`` (and the log, output files or sealed result, if given)."""
        change = record_change(
            status,
            self.site,
            self.identity,
            log=log,
            outputs=outputs,
            message=message,
            remove_outputs=remove_outputs,
            note=note,
            sealed=sealed,
        )
        return self._commit_all([change])

    def record_all(self, statuses: Sequence[StatusRecord]) -> str | None:
        """Commit each record as a commit of its own and move the branch once, at the end:
        all of them exist from that moment on, none before (a cycle's many new tasks)."""
        if not statuses:
            return None
        return self._commit_all([record_change(s, self.site, self.identity) for s in statuses])

    def _head(self) -> str | None:
        """The local branch's commit: asked of git once, then kept as this object moves it."""
        if not self._tip_known:
            self._tip = self.repo.rev_parse(self.ref)
            self._tip_tree = None
            self._tip_known = True
        return self._tip

    def _head_tree(self) -> str | None:
        """The tree of the local branch's commit (None: no commit yet)."""
        tip = self._head()
        if tip is not None and self._tip_tree is None:
            self._tip_tree = self.repo.run("rev-parse", f"{tip}^{{tree}}")
        return self._tip_tree

    def _move(self, sha: str, parent: str | None, tree: str) -> None:
        try:
            if self._plain_refs is None:
                self._plain_refs = can_move_refs(self.repo)
            if self._plain_refs:
                move_ref(self.path, self.ref, sha, parent)
            else:
                self.repo.run("update-ref", self.ref, sha, parent or ZERO)
        except BaseException:
            self._tip_known = False
            raise
        self._tip, self._tip_tree = sha, tree

    def _commit_all(self, changes: Sequence[RecordChange]) -> str:
        """A commit for each change, one after the other, then one move of the branch; the
        last commit. Small files and the trees are written here (``ptm.journal_objects``),
        big ones stream through git."""
        with self._lock:
            parent = self._head()
            tip, tree = parent, self._head_tree()
            written: dict[str, str] = {}
            try:
                for change in changes:
                    blobs = {p: write_object(self.path, "blob", d) for p, d in change.files.items()}
                    if change.paths:
                        staging = self.path / "ptm-staging"
                        blobs.update(self.repo.write_blobs({}, change.paths, staging=staging))
                    drop = (change.replace,) if change.replace is not None else ()
                    tree = self._trees.change(tree, blobs, drop)
                    tip = self._commit_tree(tree, [tip] if tip else [], change.message)
                    written[change.task] = blobs[change.status_path]
                assert tip is not None and tree is not None
                self._move(tip, parent, tree)
            except BaseException:
                self._trees.forget()
                raise
            self._known().update(written)
            self._unpushed = True
            self._last_commit = time.time()
            return tip

    def _commit_tree(self, tree: str, parents: list[str], message: str) -> str:
        """Write a commit object (signed with the site key, when there is one)."""
        commit = commit_object(tree, parents, self._identity_line, message)
        if self.sign_key is not None:
            if not self.sign_key.is_file():
                raise RegistryError(
                    f"{self.sign_key}: the site's signing key (signing_key) is missing; "
                    "nothing was recorded, the next cycle tries again"
                )
            commit = signed_commit_object(commit, ssh_signature(self.sign_key, commit))
        return write_object(self.path, "commit", commit)

    # ---- publishing -------------------------------------------------------------------------

    def unpushed(self) -> bool:
        """Whether commits wait for a push. Asked of git once; then this object keeps count,
        so that an idle agent cycle costs no git process here."""
        with self._lock:
            if self._unpushed is None:
                head = self._head()
                remote = self.repo.rev_parse(self.remote_ref)
                self._unpushed = head is not None and head != remote
            return self._unpushed

    def push(self) -> bool:
        """Push the journal; False when there was nothing to push.

        When the registry's branch has commits this agent did not make, push a merge that
        keeps exactly this agent's tree (see the module docstring) and report each one.

        The push itself runs without the journal's lock, so records go on being committed
        meanwhile (they are pushed next time)."""
        with self._push_lock:
            with self._lock:
                if not self.unpushed():
                    return False
                tip = self._head()
                assert tip is not None
            repo = self.repo
            try:
                repo.run("push", "--quiet", REMOTE, f"{tip}:{self.ref}")
            except RegistryError as exc:
                if not _is_rejected_push(str(exc)):
                    raise
                with self._lock:
                    self._overrule_foreign_commits(repo)
                    tip = self._head()
                    assert tip is not None
                    repo.run("push", "--quiet", REMOTE, f"{tip}:{self.ref}")
            with self._lock:
                repo.run("update-ref", self.remote_ref, tip)
                self._unpushed = self._head() != tip
            return True

    # ---- the lease (one site name, one runner) ----------------------------------------------

    def check_lease(self) -> None:
        """LeaseHeld when the registry's branch was written by another live agent."""
        repo = self.repo
        heads = repo.remote_branches(REMOTE, self.branch)
        tip = heads.get(self.branch)
        if tip is None:
            return
        if repo.rev_parse(tip) is None:
            repo.run("fetch", "--quiet", "--no-tags", REMOTE, f"+{self.ref}:{self.remote_ref}")
        reason = held_by_other(read_tip(repo, tip), self.identity)
        if reason is not None:
            raise LeaseHeld(f"{self.branch}: {reason}")

    def renew_lease(self) -> bool:
        """An empty commit when nothing was committed for a while, so the lease stays fresh."""
        with self._lock:
            if self._last_commit is None:
                tip = self._head()
                stamp = self.repo.run("log", "-1", "--format=%ct", tip) if tip else ""
                self._last_commit = float(stamp or 0)
            if time.time() - self._last_commit < LEASE_RENEW_S:
                return False
            self._marker(f"{self.site}: agent alive", "renewed")
            return True

    def release_lease(self) -> None:
        with self._lock:
            self._marker(f"{self.site}: agent stopped", RELEASED)

    def _marker(self, subject: str, lease: str) -> None:
        self.note(subject, [f"{LEASE_TRAILER}: {lease}"])

    def note(self, subject: str, lines: list[str]) -> None:
        """An empty commit recording a fact that is not a task's state (a lease, a resume)."""
        body = "\n".join([f"Site: {self.site}", *lines, f"{AGENT_TRAILER}: {self.identity}"])
        message = f"{subject}\n\n{body}"
        with self._lock:
            self._note(message)

    def _note(self, message: str) -> None:
        parent = self._head()
        tree = self._head_tree() or write_object(self.path, "tree", b"")
        sha = self._commit_tree(tree, [parent] if parent else [], message)
        self._move(sha, parent, tree)
        self._last_commit = time.time()
        self._unpushed = True

    def _overrule_foreign_commits(self, repo: GitRepo) -> None:
        repo.run("fetch", "--quiet", "--no-tags", REMOTE, f"+{self.ref}:{self.remote_ref}")
        remote = repo.run("rev-parse", self.remote_ref)
        local = repo.run("rev-parse", self.ref)
        if repo.is_ancestor(remote, local):
            return
        reason = held_by_other(read_tip(repo, remote), self.identity)
        if reason is not None:
            raise LeaseHeld(f"{self.branch}: {reason}")
        foreign = repo.run("rev-list", f"{local}..{remote}").split()
        for sha in foreign:
            if self.on_foreign is not None:
                self.on_foreign(sha)
        tree = repo.run("rev-parse", f"{local}^{{tree}}")
        shas = " ".join(sha[:12] for sha in foreign[:5])
        message = (
            f"Keep the records of {self.site}: {len(foreign)} commit(s) on {self.branch} were "
            f"not made by this site's agent and are undone ({shas})"
        )
        merge = self._commit_tree(tree, [local, remote], message)
        self._move(merge, local, tree)


def _committer_name(site: str) -> str:
    return f"ptm agent ({site})"


def _committer_email(site: str) -> str:
    return f"ptm-agent@{site}.invalid"


def _parse_record(data: bytes | None, source: str) -> StatusRecord | None:
    if data is None:
        return None
    try:
        document = load_yaml_text(data, source=source, max_bytes=MAX_STATUS_BYTES)
        return StatusRecord.from_document(document, source=source)
    except InvalidDocument:
        return None


def _is_rejected_push(message: str) -> bool:
    markers = ("[rejected]", "non-fast-forward", "fetch first", "Updates were rejected", "stale")
    return any(m in message for m in markers)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
