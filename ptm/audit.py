"""The auditor's report, read from git history alone: who asked for what (and whether git can
verify their signatures), what each site recorded, which exact image ran, and anything that
breaks the rules a registry lives by."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ptm.federation import RegistryRefs, read_task_status, result_branches
from ptm.gitrepo import GitRepo, SignatureCheck
from ptm.ledger import RESULTS_DIR
from ptm.task import CANCEL_FILE, TASKS_DIR

RECORD = "\x1e"
FIELD = "\x1f"


@dataclass(frozen=True)
class CommitCheck:
    """One commit of the history: git's signature check of it, its date and the paths it touched."""

    signature: SignatureCheck
    date: str
    paths: tuple[str, ...]

    @property
    def commit(self) -> str:
        return self.signature.commit

    @property
    def good(self) -> bool:
        return self.signature.good

    def signature_text(self) -> str:
        check = self.signature
        return f"{check.signer} (good)" if check.good else f"{check.author} ({check.describe()})"

    def describe(self) -> str:
        check = self.signature
        return (
            f"commit {check.commit[:12]} ({check.subject!r} by {check.author}): {check.describe()}"
        )


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


@dataclass(frozen=True)
class TaskAudit:
    task_id: str
    commits: tuple[CommitCheck, ...]  # oldest first
    sites: tuple[SiteAudit, ...]

    @property
    def submitted_by(self) -> str:
        return self.commits[0].signature_text() if self.commits else "(no commit found)"


@dataclass(frozen=True)
class AuditReport:
    tasks: tuple[TaskAudit, ...]
    findings: tuple[Finding, ...]
    signatures_checked: bool


def history(
    repo: GitRepo, ref: str, under: str, *, allowed_signers: Path | None
) -> list[CommitCheck]:
    """Every non-merge commit of ``ref`` touching ``under``, oldest first, in one git process."""
    fmt = FIELD.join(("%H", "%G?", "%GS", "%GK", "%ae", "%s", "%aI"))
    config = {"gpg.ssh.allowedSignersFile": str(allowed_signers)} if allowed_signers else {}
    config["core.quotePath"] = "false"
    out = repo.run(
        "log",
        "--reverse",
        "--no-merges",
        "--name-only",
        f"--format={RECORD}{fmt}",
        ref,
        "--",
        under,
        config=config,
        strip=False,
    )
    return parse_history(out)


def parse_history(output: str) -> list[CommitCheck]:
    checks = []
    for record in output.split(RECORD)[1:]:
        header, _, names = record.partition("\n")
        *fields, date = (header.split(FIELD) + [""] * 7)[:7]
        paths = tuple(line for line in names.splitlines() if line)
        checks.append(CommitCheck(SignatureCheck(*fields), date, paths))
    return checks


def run_audit(repo: GitRepo, refs: RegistryRefs, *, allowed_signers: Path | None) -> AuditReport:
    task_history = history(repo, refs.tasks_ref, f"{TASKS_DIR}/", allowed_signers=allowed_signers)
    by_task = _group(task_history, lambda path: _second_part(path, TASKS_DIR))
    branches = result_branches(repo, refs)
    site_history = {
        site: history(repo, ref, f"{RESULTS_DIR}/", allowed_signers=allowed_signers)
        for site, ref in branches.refs.items()
    }
    findings = [f for site, commits in site_history.items() for f in _foreign_paths(site, commits)]
    tasks = []
    for task_id in sorted(set(by_task) | _tasks_with_results(site_history)):
        if task_id not in by_task:
            findings.append(
                Finding(
                    task_id,
                    None,
                    "results-without-task",
                    "results exist for a task that was never on the tasks branch",
                )
            )
            continue
        sites = _site_audits(repo, refs, task_id, site_history)
        tasks.append(TaskAudit(task_id, tuple(by_task[task_id]), sites))
        findings += task_findings(repo, refs, tasks[-1], signatures=allowed_signers is not None)
    return AuditReport(tuple(tasks), tuple(findings), allowed_signers is not None)


def _site_audits(
    repo: GitRepo, refs: RegistryRefs, task_id: str, site_history: dict[str, list[CommitCheck]]
) -> tuple[SiteAudit, ...]:
    status = read_task_status(repo, refs, task_id)
    audits = []
    for site_status in status.sites:
        record = site_status.record
        prefix = f"{RESULTS_DIR}/{task_id}/{site_status.site}/"
        commits = tuple(
            c
            for c in site_history.get(site_status.site, ())
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
            )
        )
    return tuple(audits)


def task_findings(
    repo: GitRepo, refs: RegistryRefs, task: TaskAudit, *, signatures: bool
) -> list[Finding]:
    findings = []
    if signatures:
        findings += [
            Finding(
                task.task_id,
                None,
                "unsigned-task",
                c.describe(),
            )
            for c in task.commits
            if not c.good
        ]
    for site in task.sites:
        findings += _site_findings(repo, refs, task, site, signatures=signatures)
    return findings


def _site_findings(
    repo: GitRepo, refs: RegistryRefs, task: TaskAudit, site: SiteAudit, *, signatures: bool
) -> list[Finding]:
    findings = []
    if signatures:
        findings += [
            Finding(
                task.task_id,
                site.site,
                "unsigned-result",
                f"result {c.describe()}",
            )
            for c in site.commits
            if not c.good
        ]
    if site.task_commit is None:
        return findings
    if not repo.is_ancestor(site.task_commit, refs.tasks_ref):
        findings.append(
            Finding(
                task.task_id,
                site.site,
                "unknown-task-commit",
                f"acted on commit {site.task_commit[:12]}, which is not on the "
                "tasks branch (rewritten history?)",
            )
        )
        return findings
    later = repo.run(
        "log",
        "--format=%h",
        f"{site.task_commit}..{refs.tasks_ref}",
        "--",
        f"{TASKS_DIR}/{task.task_id}/",
        f":!{TASKS_DIR}/{task.task_id}/{CANCEL_FILE}",
    )
    if later.strip():
        findings.append(
            Finding(
                task.task_id,
                site.site,
                "changed-after-acted",
                f"the task was changed after this site acted on it "
                f"(commits {', '.join(later.split())})",
            )
        )
    return findings


def _foreign_paths(site: str, commits: Sequence[CommitCheck]) -> list[Finding]:
    findings = []
    for commit in commits:
        foreign = [p for p in commit.paths if _third_part(p, RESULTS_DIR) != site]
        if foreign:
            findings.append(
                Finding(
                    None,
                    site,
                    "foreign-path",
                    f"commit {commit.commit[:12]} on results/{site} writes "
                    f"outside results/<task>/{site}/: {', '.join(foreign[:3])}",
                )
            )
    return findings


def _tasks_with_results(site_history: dict[str, list[CommitCheck]]) -> set[str]:
    return {
        task
        for commits in site_history.values()
        for c in commits
        for p in c.paths
        if (task := _second_part(p, RESULTS_DIR))
    }


def _group(
    commits: Iterable[CommitCheck], key_of: Callable[[str], str | None]
) -> dict[str, list[CommitCheck]]:
    grouped: dict[str, list[CommitCheck]] = {}
    for commit in commits:
        for key in {k for k in map(key_of, commit.paths) if k is not None}:
            grouped.setdefault(key, []).append(commit)
    return grouped


def _second_part(path: str, top: str) -> str | None:
    parts = path.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == top else None


def _third_part(path: str, top: str) -> str | None:
    parts = path.split("/")
    return parts[2] if len(parts) > 3 and parts[0] == top else None
