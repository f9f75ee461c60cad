"""Gathering the evidence for a task from git and asking the policy: shared by the agent and
``ptm policy explain`` so that the two can never disagree.

The task is judged on a ``TaskSnapshot``: the checked listing of its folder and the texts of its
documents, in memory. Nothing is written out before the verdict; only an accepted task's
checked files are (``ptm.execution.prepare_run``), from the very blobs judged here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from ptm.errors import InvalidDocument, Problem
from ptm.gitrepo import SignatureCheck
from ptm.policy import Decision, Evidence, decide
from ptm.schema import load_yaml_text
from ptm.signatures import cancel_signer_ok, verify_cancel, verify_task
from ptm.siteconfig import PolicySettings, SiteConfig
from ptm.sync import TasksMirror, TaskSnapshot
from ptm.task import EVERY_SITE, TASK_FILE, TASKS_DIR, Task
from ptm.treecheck import TreeRefused


@dataclass(frozen=True)
class Judgement:
    """A task as this site sees it at ``head``: loaded (or why not) and the policy's verdict."""

    task_id: str
    task: Task | None
    invalid: InvalidDocument | None
    decision: Decision
    task_commit: str
    snapshot: TaskSnapshot | None = None


def judge_at(mirror: TasksMirror, config: SiteConfig, task_id: str, head: str) -> Judgement:
    """Judge ``tasks/<id>/`` as it is at ``head`` (for ``ptm policy explain``)."""
    try:
        snapshot = mirror.snapshot_at(task_id, head)
    except TreeRefused as exc:
        problem = Problem(f"{TASKS_DIR}/{task_id}", "(path)", "tree", str(exc))
        snapshot = TaskSnapshot(task_id, head, None, (problem,), None, None)
    return judge(mirror, config, snapshot)


def judge(mirror: TasksMirror, config: SiteConfig, snapshot: TaskSnapshot) -> Judgement:
    """The verdict on one snapshot. A task that plainly concerns other sites is passed over
    without asking git about its history, so that the first sync of a large registry stays
    cheap."""
    task_id, head = snapshot.task_id, snapshot.commit
    task, invalid = parse_task(snapshot)
    if task is not None and not task.targets(config.site):
        return Judgement(task_id, task, None, decide(task, config, Evidence()), head, snapshot)
    if task is None:
        assert invalid is not None
        names_us = asks_for_site(task_id, snapshot.task_text, config.site)
        decision = Decision(names_us, (f"invalid task: {invalid}",), None, needs_approval=False)
        commit = mirror.task_commit(task_id, head) if names_us else head
        return Judgement(task_id, None, invalid, decision, commit, snapshot)
    task_commit = mirror.task_commit(task_id, head)
    signatures = gather_signatures(mirror, config, task_id, head, encrypt=task.encrypt)
    evidence = Evidence(signatures=signatures)
    decision = decide(task, config, evidence)
    return Judgement(task_id, task, None, decision, task_commit, snapshot)


def gather_signatures(
    mirror: TasksMirror, config: SiteConfig, task_id: str, head: str, *, encrypt: bool = False
) -> tuple[SignatureCheck, ...]:
    policy = config.policy
    signers = policy.allowed_signers
    # Encrypted results go to the verified submitter's key: verify even where unsigned tasks run.
    if not (policy.require_signed_tasks or policy.require_encryption or encrypt) or signers is None:
        return ()
    # Key lifetimes are checked as of now, the first cycle that sees the commit, not as of
    # the committer date its pusher chose; the allowed signers file is read afresh.
    return verify_task(mirror.repo, head, task_id, signers, at=datetime.now(timezone.utc))


def parse_task(snapshot: TaskSnapshot) -> tuple[Task | None, InvalidDocument | None]:
    """The task, or every problem that stops it: the folder's shape first, then task.yaml."""
    source = f"{TASKS_DIR}/{snapshot.task_id}/{TASK_FILE}"
    problems = list(snapshot.problems)
    if snapshot.task_text is not None:
        try:
            document = load_yaml_text(snapshot.task_text, source=source)
            task = Task.from_document(snapshot.task_id, document, source=source)
        except InvalidDocument as exc:
            problems += exc.problems
        else:
            if not problems:
                return task, None
    elif not problems:
        problems.append(Problem(source, "(file)", "required", "missing"))
    return None, InvalidDocument(problems)


def asks_for_site(task_id: str, text: bytes | None, site: str) -> bool:
    """For a task that broke a rule: does its task.yaml still ask for this site (by name or
    ``*``), so that the researcher should get a ``rejected`` status? Read from the blob in git.
    A task whose YAML does not even parse cannot say; it is left alone (and logged)."""
    if text is None:
        return False
    try:
        document = load_yaml_text(text, source=f"{TASKS_DIR}/{task_id}/{TASK_FILE}")
    except InvalidDocument:
        return False
    sites = document.get("sites")
    return isinstance(sites, list) and (site in sites or EVERY_SITE in sites)


def cancel_refusal(
    mirror: TasksMirror,
    policy: PolicySettings,
    task_id: str,
    head: str,
    submitted_by: str | None,
) -> str | None:
    """Why the cancel.yaml of ``task_id`` at ``head`` does not count here (None: it does). With
    signed tasks required, a cancel must be signed by the task's verified submitter or a
    principal of ``policy.trusted_cancellers``."""
    if not policy.require_signed_tasks or policy.allowed_signers is None:
        return None
    checks = verify_cancel(
        mirror.repo, head, task_id, policy.allowed_signers, at=datetime.now(timezone.utc)
    )
    return cancel_signer_ok(checks, submitted_by, policy.trusted_cancellers)
