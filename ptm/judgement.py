"""Gathering the evidence for a task from git and asking the policy: shared by the agent and
``ptm policy explain`` so that the two can never disagree."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ptm.errors import InvalidDocument
from ptm.gitrepo import SignatureCheck
from ptm.policy import Decision, Evidence, decide
from ptm.schema import load_yaml_text
from ptm.signatures import verify_task
from ptm.siteconfig import SiteConfig
from ptm.sync import TasksMirror
from ptm.task import EVERY_SITE, TASK_FILE, TASKS_DIR, Task, load_task
from ptm.validation import problems_in_task_dir


@dataclass(frozen=True)
class Judgement:
    """A task as this site sees it at ``head``: loaded (or why not) and the policy's verdict."""

    task_id: str
    task: Task | None
    invalid: InvalidDocument | None
    decision: Decision
    task_commit: str
    task_dir: Path | None = None  # the folder written out for it, when it concerns this site


def judge(
    mirror: TasksMirror, config: SiteConfig, task_id: str, head: str, *, text: bytes | None = None
) -> Judgement:
    """Judge ``tasks/<id>/`` as it is at ``head``.

    ``text`` (task.yaml, read in one batch for every changed task) lets a task that plainly
    concerns other sites be passed over without writing its folder out or asking git about
    its history, so that the first sync of a large registry stays cheap.
    """
    if text is None:
        text = mirror.task_texts([task_id], head).get(task_id)
    foreign = _foreign_task(task_id, text, config.site) if text is not None else None
    if foreign is not None:
        return Judgement(task_id, foreign, None, decide(foreign, config, Evidence()), head)
    task_dir = mirror.materialize(task_id, head)
    problems = problems_in_task_dir(task_dir, source=f"{TASKS_DIR}/{task_id}")
    if problems:
        invalid = InvalidDocument(problems)
        names_us = _asks_for_site(task_id, text, config.site)
        decision = Decision(names_us, (f"invalid task: {invalid}",), None, needs_approval=False)
        commit = mirror.task_commit(task_id, head) if names_us else head
        return Judgement(task_id, None, invalid, decision, commit)
    task = load_task(task_dir, task_id=task_id)
    if not task.targets(config.site):
        return Judgement(task_id, task, None, decide(task, config, Evidence()), head)
    task_commit = mirror.task_commit(task_id, head)
    signatures: tuple[SignatureCheck, ...] = ()
    signers = config.policy.allowed_signers
    if config.policy.require_signed_tasks and signers is not None:
        # Key lifetimes are checked as of now, the first cycle that sees the commit, not as of
        # the committer date its pusher chose; the allowed signers file is read afresh.
        now = datetime.now(timezone.utc)
        signatures = verify_task(mirror.repo, head, task_id, signers, at=now)
    decision = decide(task, config, Evidence(signatures=signatures))
    return Judgement(task_id, task, None, decision, task_commit, task_dir)


def _foreign_task(task_id: str, text: bytes, site: str) -> Task | None:
    """The task, when its task.yaml is valid and names only other sites; None otherwise."""
    source = f"{TASKS_DIR}/{task_id}/{TASK_FILE}"
    try:
        task = Task.from_document(task_id, load_yaml_text(text, source=source), source=source)
    except InvalidDocument:
        return None
    return None if task.targets(site) else task


def _asks_for_site(task_id: str, text: bytes | None, site: str) -> bool:
    """For a task that broke a rule: does its task.yaml still ask for this site (by name or
    ``*``), so that the researcher should get a ``rejected`` status? Read from the blob in git,
    never from the written-out folder (where task.yaml may be a symlink). A task whose YAML
    does not even parse cannot say; it is left alone (and logged)."""
    if text is None:
        return False
    try:
        document = load_yaml_text(text, source=f"{TASKS_DIR}/{task_id}/{TASK_FILE}")
    except InvalidDocument:
        return False
    sites = document.get("sites")
    return isinstance(sites, list) and (site in sites or EVERY_SITE in sites)
