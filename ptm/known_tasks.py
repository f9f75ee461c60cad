"""Changes to a task this site already acted on: a cancel.yaml (honoured or refused, as
``judgement.cancel_refusal`` says) and, for anything else in its folder, a tampering warning;
the task itself is never acted on anew."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ptm.judgement import cancel_refusal
from ptm.status import StatusRecord
from ptm.sync import TaskChange
from ptm.task import CANCEL_FILE
from ptm.treecheck import TREE_MODE, RawEntry, TreeRefused, read_folder

if TYPE_CHECKING:
    from ptm.agent import Agent


def handle_known(agent: Agent, change: TaskChange, task_id: str, head: str) -> None:
    """Act on a change to the folder of ``task_id``, which has a record on the ledger."""
    if change.is_new:
        return  # recorded by a cycle that failed before it could mark the commit processed
    existing = agent.ledger.status_of(task_id)
    assert existing is not None
    if not agent.ledger.is_proven(task_id):
        agent.warn(
            f"task {task_id}: the record on {agent.ledger.branch} was not provably written by "
            "this agent (not signed with its site key); the task is not acted on"
        )
        return
    before, after = (
        _folder_at(agent, task_id, change.before),
        _folder_at(agent, task_id, change.after),
    )
    if _without_cancel(before) != _without_cancel(after):
        agent.warn(
            f"task {task_id} was changed at {head[:12]} after this site acted on it "
            f"({existing.state}, task commit {existing.task_commit[:12]}); the change is "
            "ignored",
            task=task_id,
            decision="tampering",
        )
    cancel = after.get(CANCEL_FILE)
    if cancel and cancel != before.get(CANCEL_FILE) and not existing.is_final:
        policy = agent.config.policy
        refused = cancel_refusal(agent.mirror, policy, task_id, head, existing.submitted_by)
        if refused is None:
            _request_cancel(agent, task_id, existing)
        else:
            _refuse_cancel(agent, existing, refused)


def _folder_at(agent: Agent, task_id: str, entries: tuple[RawEntry, ...]) -> dict[str, str]:
    """name -> object id of the top entries of a task folder (empty when not one folder)."""
    if len(entries) != 1 or entries[0].mode != TREE_MODE:
        return {}
    try:
        listing = read_folder(agent.mirror.repo, entries[0].oid, where=task_id, max_bytes=2**20)
    except TreeRefused:
        return {}
    return {e.name.decode("utf-8", "replace"): e.oid for e in listing}


def _refuse_cancel(agent: Agent, existing: StatusRecord, why: str) -> None:
    agent.log.warning(
        "task %s: its cancel.yaml is ignored: %s",
        existing.task,
        why,
        extra={"task": existing.task, "decision": "cancel-refused", "reason": why},
    )
    agent.ledger.record(
        existing,
        message=f"{existing.task}: cancel refused at {agent.config.site}",
        note=f"Cancel-Refused: {' '.join(why.split())[:300]}",
    )


def _request_cancel(agent: Agent, task_id: str, existing: StatusRecord) -> None:
    queued, running = agent.runs.withdraw(task_id)
    attached = [q.attach for q in queued if q.attach is not None]
    for ref in attached:  # re-attached after a restart, not yet waited for: stop it now
        agent.runtime.kill(ref)
        agent.runtime.remove(ref)
    if attached:
        agent.finish_now(
            existing, "cancelled", "cancelled while running (while the agent was down)"
        )
    elif queued or not running:
        agent.finish_now(existing, "cancelled", "cancelled before it started")
    else:
        agent.log.info(
            "task %s: cancel requested, stopping its container",
            task_id,
            extra={"task": task_id, "decision": "cancelling"},
        )


def _without_cancel(folder: dict[str, str]) -> dict[str, str]:
    return {name: oid for name, oid in folder.items() if name != CANCEL_FILE}
