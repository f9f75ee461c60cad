"""ptm's Python API for researchers; the commands ``status``, ``results`` and ``cancel`` use it too.

    from pathlib import Path
    from ptm.api import Registry

    registry = Registry.open("ssh://git@git.example.org/consortium/registry.git")
    registry.submit(
        {"task_id": "age-stats-2", "image": "org/age-stats:1.3", "sites": ["hospital-a"]},
        sign_key=Path.home() / ".ssh" / "id_ed25519",  # or git's gpg.format=ssh, user.signingkey
    )
    registry.wait("age-stats-2", timeout=3600)
    for site, result in registry.results("age-stats-2", Path("results/age-stats-2")).items():
        print(site, result.state, result.read_text("summary.csv"))

``Registry.open`` takes a registry clone (a folder, or any folder inside one) or a URL (any git
URL, or the path of a bare repository); a URL is read through a cache clone under
``$XDG_CACHE_HOME/ptm/registries/`` (``~/.cache`` by default). Every value returned is frozen.

Like ``ptm task submit``, ``submit`` and ``cancel`` refuse unsigned work when the registry's
``registry.yaml`` says its sites run only signed tasks (``require_signed_tasks``): they raise
``SignatureRequired`` (a PtmError) before anything is committed or pushed, unless called with
``allow_unsigned=True``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ptm import federation
from ptm.cancellation import Cancelled, cancel_task
from ptm.errors import PtmError, SignatureRequired
from ptm.federation import Overview, RegistryRefs, TaskStatus
from ptm.gitrepo import GitRepo
from ptm.object_commits import cancel_by_objects, submit_by_objects
from ptm.overview_memo import OverviewMemo, memo_path
from ptm.registry import find_registry_root, tasks_branch
from ptm.registry_cache import (
    cache_clone,
    cache_home,
    cache_lock,
    is_bare_repository,
    looks_like_url,
    signatures_required_at,
    tasks_branch_of,
)
from ptm.result_files import CollectedSite, collect_results, is_safe_relative_path
from ptm.result_layout import LOG_FILE, OUTPUT_DIR
from ptm.sealed import unseal_collected
from ptm.status import StatusRecord
from ptm.submission import (
    Submitted,
    TaskDraft,
    refuse_unsigned_in,
    signatures_required,
    submit_task,
    write_task,
)

__all__ = [
    "Cancelled",
    "Overview",
    "Registry",
    "SignatureRequired",
    "SiteResult",
    "Submitted",
    "TaskDraft",
    "TaskStatus",
    "WaitTimedOut",
    "draft_from_mapping",
]

DEFAULT_REMOTE = "origin"
DEFAULT_POLL_INTERVAL = 5.0
ProgressCallback = Callable[[TaskStatus, float], None]
RetryCallback = Callable[[int, str], None]
API_OPTIONS = ("sign_key=KEY", "allow_unsigned=True")


class WaitTimedOut(PtmError):
    """``Registry.wait`` ran out of time; ``status`` is the last status seen."""

    def __init__(self, status: TaskStatus, timeout: float, sites: Sequence[str] = ()) -> None:
        self.status = status
        self.timeout = timeout
        unfinished = status.unfinished(sites)
        listed = ", ".join(f"{s.site} ({s.state})" for s in unfinished) or "no site has reported"
        super().__init__(
            f"timed out after {timeout:g}s waiting for task {status.task_id}: not finished at "
            f"{listed}"
        )


@dataclass(frozen=True)
class SiteResult:
    """One site's collected result: ``folder`` holds status.yaml, log.txt and output/."""

    site: str
    state: str
    folder: Path
    files: tuple[str, ...]  # relative to folder
    record: StatusRecord | None
    refused: tuple[str, ...] = ()  # paths on the branch that were not written, and why
    problem: str | None = None  # why nothing was collected from this site (it was refused)

    @property
    def output_files(self) -> tuple[str, ...]:
        """The output files, relative to ``output/`` (``summary.csv``, ``plots/a.png``…)."""
        prefix = f"{OUTPUT_DIR}/"
        return tuple(f.removeprefix(prefix) for f in self.files if f.startswith(prefix))

    def output_path(self, name: str) -> Path:
        """Where output file ``name`` (relative to ``output/``) was written."""
        if not is_safe_relative_path(name) or name not in self.output_files:
            raise PtmError(f"{self.site} has no output file {name!r}")
        return self.folder / OUTPUT_DIR / name

    def read_bytes(self, name: str) -> bytes:
        return self.output_path(name).read_bytes()

    def read_text(self, name: str, *, encoding: str = "utf-8") -> str:
        return self.output_path(name).read_text(encoding=encoding)

    @property
    def log(self) -> str | None:
        """The container's output, when the site published one."""
        if LOG_FILE not in self.files:
            return None
        return (self.folder / LOG_FILE).read_text(encoding="utf-8", errors="replace")


@dataclass(frozen=True)
class Registry:
    """A task registry, through a local clone (yours, or ptm's cache clone of ``url``)."""

    root: Path
    tasks_branch: str
    remote: str = DEFAULT_REMOTE
    url: str | None = None  # set when ``root`` is ptm's cache clone (no work tree)

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str] | None = None,
        *,
        remote: str = DEFAULT_REMOTE,
        cache_dir: Path | None = None,
    ) -> Registry:
        """A clone (folder; default: the current one) or a URL / bare repository path."""
        if location is None:
            return cls.open_clone(Path.cwd(), remote=remote)
        text = os.fspath(location)
        if looks_like_url(text) or is_bare_repository(Path(text)):
            return cls.open_url(text, cache_dir=cache_dir)
        return cls.open_clone(Path(text), remote=remote)

    @classmethod
    def open_clone(cls, path: Path, *, remote: str = DEFAULT_REMOTE) -> Registry:
        root = find_registry_root(path)
        return cls(root, tasks_branch(root), remote)

    @classmethod
    def open_url(cls, url: str, *, cache_dir: Path | None = None) -> Registry:
        """The cache clone of ``url`` (made on first use)."""
        if is_bare_repository(Path(url)):
            url = str(Path(url).resolve())
        root = cache_clone(url, cache_dir if cache_dir is not None else cache_home())
        # No fetch here: a new clone has everything, and every reading method fetches first.
        return cls(root, tasks_branch_of(GitRepo(root), url), DEFAULT_REMOTE, url)

    @property
    def repo(self) -> GitRepo:
        return GitRepo(self.root)

    @property
    def refs(self) -> RegistryRefs:
        return RegistryRefs(self.remote, self.tasks_branch)

    def refresh(self) -> None:
        """Fetch the tasks branch and every results branch (one ``git fetch``)."""
        # A cache clone is only fetched, never checked out: everything is read from objects.
        with cache_lock(self.root) if self.url else contextlib.nullcontext():
            federation.fetch(self.repo, self.refs)

    # -- reading ------------------------------------------------------------------------------

    def overview(self, *, refresh: bool = True) -> Overview:
        """Every task and every site's state (from the overview's quick reading)."""
        if refresh:
            self.refresh()
        memo = OverviewMemo(memo_path(self.root))
        return federation.read_overview(self.repo, self.refs, memo=memo)

    def status(self, task_id: str, *, refresh: bool = True) -> TaskStatus:
        """One task, every site's validated status.yaml; PtmError for an unknown task."""
        if refresh:
            self.refresh()
        return federation.read_task_status(self.repo, self.refs, task_id)

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        sites: Sequence[str] = (),
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_progress: ProgressCallback | None = None,
    ) -> TaskStatus:
        """Poll until every targeted site is final (see ``TaskStatus.targets``).

        Raises WaitTimedOut (a PtmError) after ``timeout`` seconds; None waits for ever.
        """
        start = time.monotonic()
        while True:
            status = self.status(task_id)
            elapsed = time.monotonic() - start
            if on_progress is not None:
                on_progress(status, elapsed)
            if status.is_done(sites):
                return status
            if timeout is not None and elapsed >= timeout:
                raise WaitTimedOut(status, timeout, sites)
            remaining = poll_interval if timeout is None else min(poll_interval, timeout - elapsed)
            time.sleep(max(0.0, remaining))

    def results(
        self,
        task_id: str,
        out_dir: Path | None = None,
        *,
        sites: Sequence[str] = (),
        refresh: bool = True,
        identity: Path | None = None,
    ) -> dict[str, SiteResult]:
        """Copy each site's status.yaml, log.txt and output/ into ``out_dir/<site>/``.

        ``out_dir`` defaults to ``./results/<task_id>``. Each site's folder is replaced as a
        whole; nothing is written outside ``out_dir``. An encrypted result (``result.age``) is
        checked and decrypted in place with ``identity``, an SSH private key (default: git's
        ``user.signingkey`` without ``.pub``); ``EncryptionError`` says why when it cannot be.
        """
        status = self.status(task_id, refresh=refresh)
        target = out_dir if out_dir is not None else Path("results") / task_id
        collected = collect_results(self.repo, self.refs, status, target, sites=sites)
        opened = unseal_collected(
            (c.folder for c in collected.values()),
            identity,
            configured=lambda: self.repo.config_value("user.signingkey"),
        )
        collected = {
            site: replace(done, files=opened.get(done.folder, done.files))
            for site, done in collected.items()
        }
        return {site: _site_result(status, done) for site, done in collected.items()}

    # -- writing ------------------------------------------------------------------------------

    def submit(
        self,
        draft: TaskDraft | Mapping[str, Any],
        *,
        sign_key: Path | None = None,
        allow_unsigned: bool = False,
        on_retry: RetryCallback | None = None,
    ) -> Submitted:
        """Write ``tasks/<id>/`` from ``draft`` (a TaskDraft or its fields), commit, push.

        Signed with ``sign_key`` or git's own signing config; SignatureRequired, with nothing
        written or pushed, when neither signs and the registry requires signed tasks, unless
        ``allow_unsigned``."""
        task = draft if isinstance(draft, TaskDraft) else draft_from_mapping(draft)
        if self.url is not None:  # the cache clone has no work tree: a commit from objects
            self.refresh()
            self._refuse_unsigned(task.task_id, "submitted", sign_key, allow=allow_unsigned)
            return submit_by_objects(
                self.repo, self.refs, task, sign_key=sign_key, on_retry=on_retry
            )
        self._refuse_unsigned(task.task_id, "submitted", sign_key, allow=allow_unsigned)
        write_task(self.root, task)
        return submit_task(
            self.root,
            task.task_id,
            branch=self.tasks_branch,
            sign_key=sign_key,
            remote=self.remote,
            on_retry=on_retry,
        )

    def cancel(
        self,
        task_id: str,
        *,
        reason: str,
        sign_key: Path | None = None,
        allow_unsigned: bool = False,
        on_retry: RetryCallback | None = None,
    ) -> Cancelled:
        """Commit ``tasks/<id>/cancel.yaml`` (signed like a task) and push it; refused like an
        unsigned ``submit`` (sites that require signed tasks ignore an unsigned cancel)."""
        if self.url is not None:  # the cache clone has no work tree: a commit from objects
            self.refresh()
            self._refuse_unsigned(task_id, "cancelled", sign_key, allow=allow_unsigned)
            return cancel_by_objects(
                self.repo, self.refs, task_id, reason=reason, sign_key=sign_key, on_retry=on_retry
            )
        self._refuse_unsigned(task_id, "cancelled", sign_key, allow=allow_unsigned)
        return cancel_task(
            self.root,
            task_id,
            reason=reason,
            branch=self.tasks_branch,
            sign_key=sign_key,
            remote=self.remote,
            on_retry=on_retry,
        )

    def _refuse_unsigned(
        self, task_id: str, action: str, sign_key: Path | None, *, allow: bool
    ) -> None:
        """The rule of ``ptm task submit``; a URL's registry.yaml is read from the fetched
        tasks branch's objects, a clone's from its work tree (as the command does)."""
        if allow:
            return
        if self.url is not None:
            tip = self.repo.rev_parse(self.refs.tasks_ref)
            required = tip is not None and signatures_required_at(self.repo, tip, url=self.url)
        else:
            required = signatures_required(self.root)
        refuse_unsigned_in(
            self.repo,
            task_id,
            required=required,
            sign_key=sign_key,
            action=action,
            options=API_OPTIONS,
        )


def draft_from_mapping(values: Mapping[str, Any]) -> TaskDraft:
    """A TaskDraft from plain values (lists become tuples); PtmError for unknown keys."""
    known = {f.name for f in fields(TaskDraft)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PtmError(f"unknown task fields {unknown}; expected some of {sorted(known)}")
    converted: dict[str, Any] = {
        key: tuple(value) if key in ("sites", "command") and value is not None else value
        for key, value in values.items()
    }
    converted["files"] = tuple(Path(f) for f in values.get("files") or ())
    if isinstance(values.get("sites"), str):
        converted["sites"] = (values["sites"],)
    try:
        return TaskDraft(**converted)
    except TypeError as exc:
        raise PtmError(f"incomplete task: {exc}") from None


def _site_result(status: TaskStatus, collected: CollectedSite) -> SiteResult:
    site_status = status.site(collected.site)
    record = site_status.record if site_status is not None else None
    return SiteResult(
        collected.site,
        collected.state,
        collected.folder,
        collected.files,
        record,
        collected.refused,
        collected.problem,
    )
