"""The auditor's report, read from git history alone: who asked for what (and whether their
signatures verify), what each site recorded, which exact image ran, and anything that breaks the
rules a registry lives by.

Merges count. On the tasks branch a merge whose ``tasks/<id>/`` differs from that folder in
each of its parents (content no parent had) is one of the task's commits, made by the merger,
and a finding of its own (``evil-merge``); on a ``results/<site>`` branch a merge that changes
the site's results must be signed like the site's other commits (``unsigned-merge``), and a
path outside ``results/<task>/<site>/`` is a finding whether a commit or a merge brings it in.

Signatures are verified by ``ptm.signatures`` (``ssh-keygen``), not by git's ``%G?``: a task's
commits as of the earliest ``received_at`` a site recorded for the task (what the site saw
then; key lifetimes hold against backdated commits) or, when no site recorded one, as of each
commit's committer date; result and cancel commits as of their committer dates. A task folder
that cannot be read is a finding, never the end of the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from ptm.errors import PtmError
from ptm.federation import RegistryRefs, TaskStatus, read_task_status, result_branches
from ptm.gitrepo import GitRepo
from ptm.history import LoggedCommit, history
from ptm.names import is_valid_name
from ptm.result_layout import LOG_FILE, OUTPUT_DIR, RESULTS_DIR
from ptm.signatures import (
    CommitSignature,
    cancel_signer_ok,
    commit_label,
    verify_cancel,
    verify_commits,
)
from ptm.task import CANCEL_FILE, TASKS_DIR

NOT_CHECKED = "-"  # the status letter of a commit whose signature was not checked
Request = tuple[str, datetime | None]


@dataclass(frozen=True)
class CommitCheck:
    """One commit of the history: its signature check (``merge`` set on it when the commit is a
    merge with content of its own for the task it is listed under), its author date and the
    paths it touched (against any parent, for a merge)."""

    signature: CommitSignature
    date: str
    paths: tuple[str, ...]
    is_merge: bool = False

    @property
    def commit(self) -> str:
        return self.signature.commit

    @property
    def checked(self) -> bool:
        return self.signature.status != NOT_CHECKED

    @property
    def good(self) -> bool:
        return self.signature.good

    def signature_text(self) -> str:
        check = self.signature
        if not self.checked:
            return f"{check.author} (not checked)"
        return f"{check.signer} (good)" if check.good else f"{check.author} ({check.describe()})"

    def describe(self) -> str:
        return f"{commit_label(self.signature)}: {self.signature.describe()}"


@dataclass(frozen=True)
class Finding:
    task: str | None
    site: str | None
    rule: str
    message: str

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.task, self.site) if part)
        return (
            f"{where}: {self.message} [{self.rule}]" if where else f"{self.message} [{self.rule}]"
        )


@dataclass(frozen=True)
class SiteAudit:
    site: str
    state: str
    image: str | None
    image_ref: str | None  # the registry digest when known, else the local image ID
    task_commit: str | None
    commits: tuple[CommitCheck, ...]
    encrypted_to: tuple[str, ...] = ()  # key fingerprints the site's status names (ptm.sealed)


@dataclass(frozen=True)
class TaskAudit:
    task_id: str
    commits: tuple[CommitCheck, ...]  # oldest first
    sites: tuple[SiteAudit, ...]

    @property
    def submitted_by(self) -> str:
        return self.commits[0].signature_text() if self.commits else "(no commit found)"

    @property
    def submitter(self) -> str | None:
        """The verified signer of the commit that added the task, when it verified."""
        first = self.commits[0] if self.commits else None
        return first.signature.signer if first is not None and first.good else None


@dataclass(frozen=True)
class AuditReport:
    tasks: tuple[TaskAudit, ...]
    findings: tuple[Finding, ...]
    signatures_checked: bool


@dataclass(frozen=True)
class AuditOptions:
    allowed_signers: Path | None = None
    trusted_cancellers: tuple[str, ...] = ()  # who may cancel any task, besides its submitter


def run_audit(repo: GitRepo, refs: RegistryRefs, options: AuditOptions) -> AuditReport:
    findings: list[Finding] = []
    by_task = commits_by_task(history(repo, refs.tasks_ref, f"{TASKS_DIR}/"))
    branches = result_branches(repo, refs)
    site_logs = {site: history(repo, ref, None) for site, ref in branches.refs.items()}
    findings += [f for site, log in site_logs.items() for f in foreign_paths(site, log)]
    statuses: dict[str, TaskStatus | None] = {}
    for task_id in sorted(set(by_task) | tasks_with_results(site_logs)):
        if task_id not in by_task:
            message = "results exist for a task that was never on the tasks branch"
            findings.append(Finding(task_id, None, "results-without-task", message))
            continue
        statuses[task_id], problem = read_status(repo, refs, task_id)
        findings += [problem] if problem else []
    checks = check_all(repo, _requests(by_task, statuses, site_logs), options.allowed_signers)
    site_checks = {
        site: [_commit_check(c, checks[(c.commit, None)], evil=False) for c in log]
        for site, log in site_logs.items()
    }
    tasks = []
    for task_id, status in statuses.items():
        at = received_at(status)
        commits = tuple(
            _commit_check(c, checks[(c.commit, at)], evil=evil) for c, evil in by_task[task_id]
        )
        task = TaskAudit(task_id, commits, _site_audits(status, task_id, site_checks))
        tasks.append(task)
        findings += task_findings(repo, refs, task, options)
        findings += plaintext_findings(status, task)
    return AuditReport(tuple(tasks), tuple(findings), options.allowed_signers is not None)


def _requests(
    by_task: Mapping[str, Sequence[tuple[LoggedCommit, bool]]],
    statuses: Mapping[str, TaskStatus | None],
    site_logs: Mapping[str, Sequence[LoggedCommit]],
) -> list[tuple[LoggedCommit, datetime | None]]:
    requests = [
        (commit, received_at(status))
        for task_id, status in statuses.items()
        for commit, _ in by_task[task_id]
    ]
    return requests + [(commit, None) for log in site_logs.values() for commit in log]


def _commit_check(commit: LoggedCommit, check: CommitSignature, *, evil: bool) -> CommitCheck:
    return CommitCheck(replace(check, merge=evil), commit.date, commit.paths, commit.is_merge)


def commits_by_task(
    commits: Iterable[LoggedCommit],
) -> dict[str, list[tuple[LoggedCommit, bool]]]:
    """Task folder name (as the tree has it, maybe invalid) → its commits, oldest first, each
    with whether it is an evil merge for that task. Merges that only bring in one parent's
    version of the folder are left out: the commits on that side are listed."""
    grouped: dict[str, list[tuple[LoggedCommit, bool]]] = {}
    for commit in commits:
        for task_id in sorted({t for t in map(task_of, commit.paths) if t is not None}):
            if not commit.is_merge:
                grouped.setdefault(task_id, []).append((commit, False))
            elif commit.differs_from_every_parent(f"{TASKS_DIR}/{task_id}/"):
                grouped.setdefault(task_id, []).append((commit, True))
    return grouped


def check_all(
    repo: GitRepo,
    requests: Sequence[tuple[LoggedCommit, datetime | None]],
    allowed_signers: Path | None,
) -> dict[Request, CommitSignature]:
    """Each ``(commit, time)`` verified once, or marked unchecked without allowed signers."""
    unique = list(dict.fromkeys((c.commit, at) for c, at in requests))
    if allowed_signers is None:
        logged = {c.commit: c for c, _ in requests}
        return {key: _unchecked(logged[key[0]]) for key in unique}
    return dict(zip(unique, verify_commits(repo, unique, allowed_signers), strict=True))


def _unchecked(commit: LoggedCommit) -> CommitSignature:
    return CommitSignature(
        commit.commit, NOT_CHECKED, "", "", commit.author, commit.subject, detail="not checked"
    )


def received_at(status: TaskStatus | None) -> datetime | None:
    """The earliest time a site recorded receiving the task, when any did."""
    times = []
    for site in status.sites if status is not None else ():
        if site.record is None:
            continue
        try:
            moment = datetime.fromisoformat(site.record.received_at.replace("Z", "+00:00"))
        except ValueError:
            continue
        times.append(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))
    return min(times, default=None)


def read_status(
    repo: GitRepo, refs: RegistryRefs, task_id: str
) -> tuple[TaskStatus | None, Finding | None]:
    """The task's status, or the finding that says why it cannot be read (never an error)."""
    if not is_valid_name(task_id):
        message = f"{TASKS_DIR}/{task_id}/ is not a valid task folder name"
        return None, Finding(None, None, "invalid-task-folder", message)
    try:
        status = read_task_status(repo, refs, task_id)
    except PtmError as exc:
        return None, Finding(task_id, None, "invalid-task", str(exc))
    if status.problem is not None:
        return status, Finding(task_id, None, "invalid-task", status.problem)
    return status, None


def _site_audits(
    status: TaskStatus | None, task_id: str, site_checks: Mapping[str, Sequence[CommitCheck]]
) -> tuple[SiteAudit, ...]:
    audits = []
    for site_status in status.sites if status is not None else ():
        record = site_status.record
        prefix = f"{RESULTS_DIR}/{task_id}/{site_status.site}/"
        commits = tuple(
            c
            for c in site_checks.get(site_status.site, ())
            if any(p.startswith(prefix) for p in c.paths)
        )
        if record is None and not commits:
            continue
        image_ref = (record.image_digest or record.image_id) if record else None
        audits.append(
            SiteAudit(
                site_status.site,
                site_status.state,
                record.image if record else None,
                image_ref,
                record.task_commit if record else None,
                commits,
                record.encrypted_to if record else (),
            )
        )
    return tuple(audits)


def plaintext_findings(status: TaskStatus | None, task: TaskAudit) -> list[Finding]:
    """A task that asked ``encrypt: true`` whose log or outputs a site published in the clear."""
    if status is None or status.task is None or not status.task.encrypt:
        return []
    findings = []
    for site in task.sites:
        prefix = f"{RESULTS_DIR}/{task.task_id}/{site.site}/"
        plain = (f"{prefix}{LOG_FILE}", f"{prefix}{OUTPUT_DIR}/")
        if any(p.startswith(plain) for c in site.commits for p in c.paths):
            message = "the task asked for encrypt: true, but its log or outputs were published "
            findings.append(
                Finding(task.task_id, site.site, "plaintext-result", message + "unencrypted")
            )
    return findings


def task_findings(
    repo: GitRepo, refs: RegistryRefs, task: TaskAudit, options: AuditOptions
) -> list[Finding]:
    findings = [
        Finding(task.task_id, None, "evil-merge", f"{commit_label(c.signature)} to {_folder(task)}")
        for c in task.commits
        if c.signature.merge
    ]
    findings += [
        Finding(task.task_id, None, "unsigned-task", c.describe())
        for c in task.commits
        if c.checked and not c.good
    ]
    cancel = cancel_finding(repo, refs, task, options)
    findings += [cancel] if cancel else []
    for site in task.sites:
        findings += _site_findings(repo, refs, task, site)
    return findings


def _folder(task: TaskAudit) -> str:
    return f"{TASKS_DIR}/{task.task_id}/"


def cancel_finding(
    repo: GitRepo, refs: RegistryRefs, task: TaskAudit, options: AuditOptions
) -> Finding | None:
    """``untrusted-cancel`` when the commits behind cancel.yaml are not signed by the task's
    verified submitter or a trusted canceller (as of their committer dates)."""
    path = f"{_folder(task)}{CANCEL_FILE}"
    if options.allowed_signers is None or not repo.list_tree(refs.tasks_ref, path):
        return None
    checks = verify_cancel(repo, refs.tasks_ref, task.task_id, options.allowed_signers, at=None)
    reason = cancel_signer_ok(checks, task.submitter, options.trusted_cancellers)
    return Finding(task.task_id, None, "untrusted-cancel", reason) if reason else None


def _site_findings(
    repo: GitRepo, refs: RegistryRefs, task: TaskAudit, site: SiteAudit
) -> list[Finding]:
    findings = [
        Finding(
            task.task_id,
            site.site,
            "unsigned-merge" if c.is_merge else "unsigned-result",
            f"result {'merge ' if c.is_merge else ''}{c.describe()}",
        )
        for c in site.commits
        if c.checked and not c.good
    ]
    if site.task_commit is None:
        return findings
    if not repo.is_ancestor(site.task_commit, refs.tasks_ref):
        message = (
            f"acted on commit {site.task_commit[:12]}, which is not on the tasks branch "
            "(rewritten history?)"
        )
        return [*findings, Finding(task.task_id, site.site, "unknown-task-commit", message)]
    later = repo.run(
        "log",
        "--format=%h",
        f"{site.task_commit}..{refs.tasks_ref}",
        "--",
        _folder(task),
        f":!{_folder(task)}{CANCEL_FILE}",
    )
    if later.strip():
        message = (
            f"the task was changed after this site acted on it (commits {', '.join(later.split())})"
        )
        findings.append(Finding(task.task_id, site.site, "changed-after-acted", message))
    return findings


def foreign_paths(site: str, log: Sequence[LoggedCommit]) -> list[Finding]:
    """Commits and merges on ``results/<site>`` that bring in paths outside the site's own
    ``results/<task>/<site>/`` folders."""
    findings = []
    for commit in log:
        foreign = [p for p in commit.paths if result_site(p) != site]
        if foreign:
            kind = "merge commit" if commit.is_merge else "commit"
            verb = "brings in paths" if commit.is_merge else "writes"
            findings.append(
                Finding(
                    None,
                    site,
                    "foreign-path",
                    f"{kind} {commit.commit[:12]} on results/{site} {verb} outside "
                    f"results/<task>/{site}/: {_some(foreign)}",
                )
            )
    return findings


def _some(paths: Sequence[str], shown: int = 3) -> str:
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


def tasks_with_results(site_logs: Mapping[str, Sequence[LoggedCommit]]) -> set[str]:
    return {
        parts[1]
        for log in site_logs.values()
        for commit in log
        for path in commit.paths
        if len(parts := path.split("/")) > 3 and parts[0] == RESULTS_DIR
    }


def task_of(path: str) -> str | None:
    parts = path.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == TASKS_DIR else None


def result_site(path: str) -> str | None:
    """The ``<site>`` of ``results/<task>/<site>/…``; None for any other path."""
    parts = path.split("/")
    return parts[2] if len(parts) > 3 and parts[0] == RESULTS_DIR else None
