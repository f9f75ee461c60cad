"""Gathering the evidence for a task from git and asking the policy: shared by the agent and
``ptm policy explain`` so that the two can never disagree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ptm.errors import InvalidDocument
from ptm.gitrepo import SignatureCheck
from ptm.policy import Decision, Evidence, decide
from ptm.siteconfig import SiteConfig
from ptm.sync import TasksMirror
from ptm.task import TASK_FILE, Task, load_task


@dataclass(frozen=True)
class Judgement:
    """A task as this site sees it at ``head``: loaded (or why not) and the policy's verdict."""

    task_id: str
    task: Task | None
    invalid: InvalidDocument | None
    decision: Decision
    task_commit: str


def judge(mirror: TasksMirror, config: SiteConfig, task_id: str, head: str) -> Judgement:
    """Judge ``tasks/<id>/`` as checked out in ``mirror`` at ``head``."""
    task_dir = mirror.task_dir(task_id)
    task_commit = mirror.task_commit(task_id, head)
    try:
        task = load_task(task_dir, task_id=task_id)
    except InvalidDocument as exc:
        names_us = _may_name_site(task_dir / TASK_FILE, config.site)
        reason = f"invalid task: {exc}"
        decision = Decision(names_us, (reason,), None, needs_approval=False)
        return Judgement(task_id, None, exc, decision, task_commit)
    signatures: tuple[SignatureCheck, ...] = ()
    signers = config.policy.allowed_signers
    if config.policy.require_signed_tasks and signers is not None:
        signatures = tuple(mirror.signatures(mirror.task_commits(task_id, head), signers))
    decision = decide(task, config, Evidence(signatures=signatures))
    return Judgement(task_id, task, None, decision, task_commit)


def _may_name_site(task_file: Path, site: str) -> bool:
    """For a task too broken to load: does its text name this site (or every site)?"""
    try:
        text = task_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return site in text or "'*'" in text or '"*"' in text
