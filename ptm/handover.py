"""Work handed to the agent from outside its cycle: the site admin's decisions (``ptm agent
approve/deny/release``), ``ptm agent resume`` records, and the open tasks an earlier agent left
(re-attached, started again when created but never started, or ended as crashed)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ptm.decisions import AdminDecision, forget_decision, pending_decisions
from ptm.errors import PtmError
from ptm.execution import prepare_run
from ptm.resume import pending_resumes
from ptm.run_queue import QueuedRun
from ptm.status import StatusRecord, utc_now_text

if TYPE_CHECKING:
    from ptm.agent import Agent


def apply_admin_decisions(agent: Agent) -> None:
    for decision in pending_decisions(agent.workdir):
        record = agent.ledger.status_of(decision.task_id)
        if record is None or record.state not in {"awaiting_approval", "reviewing"}:
            state = record.state if record else "unknown here"
            agent.log.warning(
                "decision %s for task %s ignored: the task is %s",
                decision.verdict,
                decision.task_id,
                state,
                extra={"task": decision.task_id},
            )
        else:
            _apply(agent, decision, record)
        forget_decision(agent.workdir, decision.task_id)


def record_resumes(agent: Agent) -> None:
    """Commit each ``ptm agent resume`` decision (signed) on the results branch."""
    for path, resumed in pending_resumes(agent.workdir):
        lines = [
            f"Resumed-By: {resumed.resumed_by}",
            f"Resumed-At: {resumed.resumed_at}",
            f"Reason: {' '.join(resumed.reason.split())[:300]}",
            f"Halt: {' '.join(resumed.halt.split())[:300]}",
            f"Processed-Before: {resumed.processed_before or '-'}",
            f"Processed-After: {resumed.processed_after}",
            f"Tasks-Head: {resumed.tasks_head}",
        ]
        agent.ledger.note(f"{agent.config.site}: resumed after a tamper halt", lines)
        path.unlink()
        agent.log.warning(
            "resumed after a tamper halt by %s: %s",
            resumed.resumed_by,
            resumed.reason,
            extra={"decision": "resumed", "reason": resumed.reason},
        )


def _apply(agent: Agent, decision: AdminDecision, record: StatusRecord) -> None:
    task_id, by = decision.task_id, decision.decided_by
    extra = {"task": task_id, "decision": decision.verdict, "reason": decision.reason}
    if decision.verdict == "deny":
        agent.execution.discard_held(task_id)
        denied = replace(
            record,
            state="denied",
            decided_by=by,
            finished_at=utc_now_text(),
            reason=f"denied by the site admin: {decision.reason}",
        )
        agent.ledger.record(denied)
    elif record.state == "reviewing" and decision.verdict == "release":
        agent.execution.release(task_id, decided_by=by)
    elif record.state == "awaiting_approval" and decision.verdict == "approve":
        snapshot = agent.mirror.snapshot_at(task_id, record.task_commit)
        task = agent.task_of(snapshot)
        agent.accept(task, replace(record, reason=None, decided_by=by), snapshot)
    else:
        agent.log.warning(
            "cannot %s task %s: it is %s", decision.verdict, task_id, record.state, extra=extra
        )
        return
    agent.log.info("task %s: %s by %s", task_id, decision.verdict, by, extra=extra)


def resume_open_tasks(agent: Agent) -> None:
    containers = {ref.task_id: ref for ref in agent.runtime.find_containers(agent.config.site)}
    open_tasks = agent.ledger.open_tasks()
    open_ids = {r.task for r in open_tasks}
    for task_id, ref in containers.items():
        record = agent.ledger.status_of(task_id)
        if task_id not in open_ids and record is not None and agent.ledger.is_proven(task_id):
            agent.runtime.remove(ref)  # an ended task's container, left by a killed agent
    for record in open_tasks:
        container = containers.get(record.task)
        if record.state in {"awaiting_approval", "reviewing"}:
            continue
        if not agent.ledger.is_proven(record.task):
            agent.warn(
                f"task {record.task}: its open record ({record.state}) on "
                f"{agent.ledger.branch} was not provably written by this agent; not resumed"
            )
            continue
        try:
            snapshot = agent.mirror.snapshot_at(record.task, record.task_commit)
            task = agent.task_of(snapshot)
        except PtmError as exc:
            agent.finish_now(record, "crashed", f"cannot resume: {exc}")
            continue
        if container is None and record.state == "running":
            agent.finish_now(
                record,
                "crashed",
                "the container is gone (the agent or the host stopped while it ran); not run again",
            )
            continue
        if container is None:
            prepare_run(agent.workdir, task, snapshot, agent.mirror.repo)
        agent.log.info(
            "task %s: resuming (%s%s)",
            record.task,
            record.state,
            ", re-attaching to its container" if container else "",
            extra={"task": record.task, "decision": "resumed"},
        )
        agent.runs.add(QueuedRun(task, record, container))
