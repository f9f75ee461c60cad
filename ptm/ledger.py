"""A site's results branch (``results/<site>``): its append-only ledger of decisions and results.

Every status change is committed here before anything else happens, so the branch (pushed or
not yet) is the truth about what this site did; pushes carry everything committed since the last
one, and a failed push loses nothing.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from ptm.errors import RegistryError
from ptm.gitrepo import GitRepo
from ptm.registry import commit, push_with_rebase, ssh_environment
from ptm.schema import dump_yaml, load_yaml_text
from ptm.status import OPEN_STATES as OPEN_STATE_SET
from ptm.status import StatusRecord
from ptm.workdir import write_atomically

REMOTE = "origin"
RESULTS_DIR = "results"
STATUS_FILE = "status.yaml"
LOG_FILE = "log.txt"
OUTPUT_DIR = "output"
OPEN_STATES = tuple(sorted(OPEN_STATE_SET))


def results_branch(site: str) -> str:
    return f"results/{site}"


def result_path(task_id: str, site: str) -> str:
    return f"{RESULTS_DIR}/{task_id}/{site}"


class Ledger:
    """The results branch of one site, in its own small clone in the agent's work directory."""

    def __init__(
        self, path: Path, *, url: str, site: str, ssh_key: Path | None, sign_key: Path | None
    ) -> None:
        self.path = path
        self.url = url
        self.site = site
        self.branch = results_branch(site)
        self.sign_key = sign_key
        self._ssh_key = ssh_key
        self._lock = threading.RLock()
        self._unpushed: bool | None = None  # None: not known yet, ask git

    @property
    def repo(self) -> GitRepo:
        return GitRepo(self.path, env=ssh_environment(self._ssh_key))

    def ensure(self) -> None:
        """Create the local clone of ``results/<site>`` (starting it if the registry has none)."""
        if (self.path / ".git").is_dir():
            self.repo.remove_stale_locks()
            return
        partial = self.path.with_name(self.path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        repo = GitRepo(partial, env=ssh_environment(self._ssh_key))
        repo.run("init", "--quiet", f"--initial-branch={self.branch}")
        repo.run("remote", "add", REMOTE, self.url)
        tracking = f"+refs/heads/{self.branch}:refs/remotes/{REMOTE}/{self.branch}"
        repo.run("config", f"remote.{REMOTE}.fetch", tracking)
        repo.run("config", "user.name", f"ptm agent ({self.site})")
        repo.run("config", "user.email", f"ptm-agent@{self.site}.invalid")
        if self.branch in repo.remote_branches(REMOTE, self.branch):
            repo.run("fetch", "--quiet", "--no-tags", REMOTE)
            repo.run("reset", "--quiet", "--hard", f"{REMOTE}/{self.branch}")
        partial.rename(self.path)

    def status_of(self, task_id: str) -> StatusRecord | None:
        path = self.path / result_path(task_id, self.site) / STATUS_FILE
        if not path.is_file():
            return None
        source = f"{self.branch}:{result_path(task_id, self.site)}/{STATUS_FILE}"
        document = load_yaml_text(path.read_bytes(), source=source)
        return StatusRecord.from_document(document, source=source)

    def open_tasks(self) -> list[StatusRecord]:
        """Tasks whose last recorded state is not final (found by one ``git grep``)."""
        pattern = "^state: (" + "|".join(OPEN_STATES) + ")$"
        try:
            out = self.repo.run(
                "grep",
                "-l",
                "-E",
                pattern,
                "HEAD",
                "--",
                f"{RESULTS_DIR}/*/{self.site}/{STATUS_FILE}",
            )
        except RegistryError:
            return []  # git grep exits 1 when nothing matches, and on an empty branch
        records = []
        for line in out.splitlines():
            task_id = line.removeprefix("HEAD:").split("/")[1]
            record = self.status_of(task_id)
            if record is not None:
                records.append(record)
        return records

    def all_records(self) -> list[StatusRecord]:
        """Every task this site has a status for (for ``ptm agent status``, not for cycles)."""
        folder = self.path / RESULTS_DIR
        if not folder.is_dir():
            return []
        records = []
        for task_dir in sorted(folder.iterdir()):
            record = self.status_of(task_dir.name)
            if record is not None:
                records.append(record)
        return records

    def record(
        self,
        status: StatusRecord,
        *,
        log: bytes | None = None,
        outputs: Path | None = None,
        message: str | None = None,
    ) -> str:
        """Write ``status.yaml`` (and the log and output files, if given) and commit them."""
        with self._lock:
            folder = self.path / result_path(status.task, self.site)
            write_atomically(folder / STATUS_FILE, dump_yaml(status.to_document()))
            if log is not None:
                (folder / LOG_FILE).write_bytes(log)
            if outputs is not None:
                shutil.rmtree(folder / OUTPUT_DIR, ignore_errors=True)
                shutil.copytree(outputs, folder / OUTPUT_DIR, symlinks=True)
            subject = message or f"{status.task}: {status.state} at {self.site}"
            body = f"\n\nTask: {status.task}\nSite: {self.site}\nState: {status.state}"
            if status.reason:
                body += f"\nReason: {' '.join(status.reason.split())[:300]}"
            sha = commit(
                self.repo,
                [result_path(status.task, self.site)],
                subject + body,
                sign_key=self.sign_key,
                allow_empty=True,
            )
            self._unpushed = True
            return sha

    def unpushed(self) -> bool:
        """Whether commits wait for a push. Asked of git once; then this object keeps count,
        so that an idle agent cycle costs no git process here."""
        with self._lock:
            if self._unpushed is None:
                repo = self.repo
                head = repo.rev_parse("HEAD")
                remote = repo.rev_parse(f"{REMOTE}/{self.branch}")
                self._unpushed = head is not None and head != remote
            return self._unpushed

    def push(self) -> bool:
        """Push everything not yet on the registry; False when there was nothing to push."""
        with self._lock:
            if not self.unpushed():
                return False
            # git updates refs/remotes/origin/results/<site> itself on a successful push.
            push_with_rebase(self.repo, self.branch, sign_key=self.sign_key, remote=REMOTE)
            self._unpushed = False
            return True
