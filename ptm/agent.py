"""The site agent: sync → plan → policy → run → publish, once per cycle.

A cycle's cost grows with what changed on the tasks branch since the last processed commit, never
with the registry's size: an idle cycle is one poll of the branch head (an ``ls-refs`` over the
shared SSH connection, ``ptm.ref_poll``; an ``ls-remote`` or a fetch elsewhere; nothing for a
watched local registry) and, when results are waiting, one push. State lives on the results
branch (committed before anything is pushed) plus the last processed commit in the work
directory, so an agent killed at any moment resumes where it was.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import NamedTuple

from ptm import __version__
from ptm.engine_wait import AgentStopping, EngineWait
from ptm.errors import PtmError, RegistryError, TamperingDetected
from ptm.execution import TaskExecution, prepare_run
from ptm.handover import apply_admin_decisions, record_resumes, resume_open_tasks
from ptm.judgement import cancel_refusal, judge, parse_task
from ptm.known_tasks import handle_known
from ptm.lease import LeaseHeld, agent_identity
from ptm.push_access import is_permission_denied
from ptm.registry import ssh_environment
from ptm.run_queue import QueuedRun, RunQueue
from ptm.runtimes.base import Runtime
from ptm.site_repos import results_ledger, tasks_mirror
from ptm.siteconfig import SiteConfig
from ptm.ssh_share import SharedConnection
from ptm.status import State, StatusRecord, utc_now_text
from ptm.sync import TaskChange, TaskSnapshot
from ptm.task import Task
from ptm.treecheck import TreeRefused
from ptm.workdir import WorkDir


class Acceptance(NamedTuple):
    """A new task the site accepts, not recorded yet."""

    task: Task
    record: StatusRecord
    snapshot: TaskSnapshot


PUSH_SPACING_S = 1.0


@dataclass(frozen=True)
class CycleReport:
    head: str | None
    new_tasks: int
    started: int
    pushed: bool
    idle: bool


class Agent:
    """One site's agent. Hand it a validated config and a Runtime (Docker in production)."""

    def __init__(self, config: SiteConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.workdir = WorkDir(config.workdir)
        registry = config.registry
        self.mirror = tasks_mirror(config)
        self.ledger = results_ledger(config)
        self.ssh = SharedConnection(
            registry.url, self.workdir.root / "ssh", poll_interval=config.poll_interval
        )
        if self.ssh.usable:
            self.mirror.share = self.ledger.share = self.ssh
        self.log = logging.getLogger(f"ptm.agent.{config.site}")
        self.stopping = threading.Event()
        self.execution = TaskExecution(
            site=config,
            runtime=runtime,
            ledger=self.ledger,
            workdir=self.workdir,
            progress=self._pull_progress,
            engine=EngineWait(self.stopping, float(config.poll_interval), self.log),
        )
        self.runs = RunQueue(config.limits.max_parallel, self._run, self.stopping)
        self.wakeup = threading.Event()
        self.push_due: float | None = None  # (monotonic) when results held back are pushed
        self._last_push = float("-inf")

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Clone what is missing and resume work an earlier agent left unfinished."""
        self.workdir.prepare()
        self.mirror.ensure_clone()
        self.ledger.on_foreign = self._foreign_commit
        self.ledger.identity = agent_identity(self.workdir.root)
        self.ledger.ensure()
        self.ledger.check_lease()
        resume_open_tasks(self)

    def hand_back(self) -> int:
        """Stop: push what is committed, leave running containers for the next start."""
        self.stopping.set()
        running = self.runs.clear()
        try:
            if running == 0:
                self.ledger.release_lease()  # nothing left to re-attach: a replacement may start
            self.ledger.push()  # not publish(): there is no next cycle to retry it in
        except PtmError as exc:  # e.g. git cut off once a stop's grace is over
            self.log.warning(
                "stopping without the last push (what is committed here is pushed at the next "
                "start; the lease stays until it expires or this agent starts again): %s",
                exc,
                extra={"decision": "stopping"},
            )
        registry = self.config.registry
        self.ssh.close(ssh_environment(registry.ssh_key, registry.known_hosts))
        return running

    def once(self) -> CycleReport:
        """One cycle, then wait for every task it started and push the results."""
        report = self.cycle()
        self.drain()
        pushed = self.publish()
        return replace(report, pushed=report.pushed or pushed)

    def drain(self) -> None:
        self.runs.wait()

    # ---- one cycle -----------------------------------------------------------------------

    def cycle(self) -> CycleReport:
        self.runs.reap()
        registry = self.config.registry
        self.ssh.ensure(ssh_environment(registry.ssh_key, registry.known_hosts))
        apply_admin_decisions(self)
        record_resumes(self)
        state = self.workdir.load_state()
        if state.halted:
            self.log.error("halted: %s", state.halted, extra={"decision": "halted"})
            return CycleReport(None, 0, 0, self.publish(), idle=True)
        polled = self.mirror.poll(state.processed)
        head, fetched = polled.head, polled.fetched
        if head is None:
            raise RegistryError(
                f"{self.config.registry.url}: the tasks branch "
                f"{self.config.registry.branch!r} does not exist"
            )
        if head == state.processed:
            started = self.runs.start_ready()
            return CycleReport(head, 0, started, self.publish(), idle=started == 0)
        if not fetched:
            head = self.mirror.fetch()
        try:
            self.mirror.check_not_rewritten(state.processed, head)
        except TamperingDetected as exc:
            self.workdir.save_state(state.with_halt(str(exc)))
            self.log.error("%s", exc, extra={"decision": "halted"})
            return CycleReport(head, 0, 0, self.publish(), idle=True)
        try:
            changes = self.mirror.changes(state.processed, head)
        except TreeRefused as exc:
            self._refuse_once(f"{head[:12]}: {exc}; waiting for a commit that repairs it")
            return CycleReport(head, 0, 0, self.publish(), idle=False)
        started = self._handle_changes(changes, head)
        # Only now, with every record this commit implies committed, is it processed.
        self.workdir.save_state(self.workdir.load_state().with_processed(head))
        started += self.runs.start_ready()
        if fetched:
            self.mirror.upkeep()
        new = sum(1 for c in changes if c.is_new)
        return CycleReport(head, new, started, self.publish(), idle=False)

    def publish_results(self) -> bool:
        """What a run's end needs (no poll): the next queued task started, the result pushed.
        While other tasks still run, pushes are at least PUSH_SPACING_S apart (each one costs
        the registry a pack; a busy site's results then wait up to that long); once none
        runs, at once. Whether it pushed."""
        self.runs.reap()
        self.runs.start_ready()
        spaced = self._last_push + PUSH_SPACING_S
        if self.runs.busy() and time.monotonic() < spaced:
            self.push_due = spaced
            return False
        return self.publish()

    def publish(self) -> bool:
        self.push_due = None
        self._last_push = time.monotonic()
        try:
            self.ledger.renew_lease()
            return self.ledger.push()
        except LeaseHeld as exc:
            self.workdir.save_state(self.workdir.load_state().with_halt(str(exc)))
            self.log.error("%s", exc, extra={"decision": "halted"})
            return False
        except RegistryError as exc:
            if is_permission_denied(str(exc)):
                self.warn(
                    f"the registry refuses this site's push to {self.ledger.branch} for "
                    "permissions: a permanent error until an admin changes the host's rules or "
                    f"the key (results stay committed locally and are pushed once allowed): {exc}",
                    decision="push-denied",
                )
                return False
            self.log.warning(
                "results not pushed yet (kept locally, retried next cycle): %s",
                exc,
                extra={"decision": "push-deferred"},
            )
            return False

    # ---- planning ------------------------------------------------------------------------

    def _handle_changes(self, changes: list[TaskChange], head: str) -> int:
        """Act on the changed task folders; return how many tasks were started meanwhile (each
        one as soon as its ``accepted`` is committed and a slot is free)."""
        fresh: list[str] = []
        for change in changes:
            task_id = change.task_id
            if task_id is None:
                self._refuse_once(
                    f"{change.shown}: not a valid task id (^[a-z0-9][a-z0-9._-]{{0,62}}$); "
                    "nothing in it is read"
                )
            elif self.ledger.status_of(task_id) is not None:
                handle_known(self, change, task_id, head)
            elif change.after:
                fresh.append(task_id)
        index = self.mirror.index(head)
        started = 0
        waiting: list[Acceptance] = []
        for snapshot in self.mirror.snapshots(index, fresh).values():
            acceptance = self._receive(snapshot)
            if acceptance is None:
                continue
            if waiting or self.runs.free_slots() == 0:
                waiting.append(acceptance)  # no slot for it now: recorded with the others
            else:
                self.accept(*acceptance)
                started += self.runs.start_ready()
        self._accept_all(waiting)
        return started + self.runs.start_ready()

    def _refuse_once(self, text: str) -> None:
        state = self.workdir.load_state()
        if text in state.warnings:
            return
        self.log.warning("refused: %s", text, extra={"decision": "refused", "reason": text})
        self.workdir.save_state(state.with_warning(text))

    def warn(self, text: str, *, task: str | None = None, decision: str = "tampering") -> None:
        self.log.error("%s", text, extra={"task": task, "decision": decision})
        state = self.workdir.load_state()
        if text not in state.warnings:
            self.workdir.save_state(state.with_warning(text))

    def _foreign_commit(self, sha: str) -> None:
        self.warn(
            f"commit {sha[:12]} on {self.ledger.branch} was not made by this agent; its changes "
            "are undone by this agent's next push and it is never acted on"
        )

    def _receive(self, snapshot: TaskSnapshot) -> Acceptance | None:
        """Judge a new task and record what was decided, unless it is accepted: then what
        ``accept`` needs (the caller records it, maybe with others in one move)."""
        task_id = snapshot.task_id
        verdict = judge(self.mirror, self.config, snapshot)
        decision = verdict.decision
        cancel_now = snapshot.cancel_text is not None
        if cancel_now and (
            refused := cancel_refusal(
                self.mirror, self.config.policy, task_id, snapshot.commit, decision.submitted_by
            )
        ):
            self.log.warning(
                "task %s: its cancel.yaml is ignored: %s",
                task_id,
                refused,
                extra={"task": task_id, "decision": "cancel-refused", "reason": refused},
            )
            cancel_now = False
        if not decision.for_this_site and verdict.invalid is not None:
            self._refuse_once(
                f"task {task_id} ignored: it is invalid and does not readably ask for this "
                f"site: {verdict.invalid.problems[0]}"
            )
            return None
        if not decision.for_this_site:
            self.log.debug("task %s is not for this site", task_id, extra={"task": task_id})
            return None
        record = StatusRecord(
            task=task_id,
            site=self.config.site,
            state="received",
            task_commit=verdict.task_commit,
            received_at=utc_now_text(),
            agent=f"ptm {__version__}",
            submitted_by=decision.submitted_by,
            image=verdict.task.image if verdict.task else None,
        )
        if verdict.task is None or not decision.accepted:
            self._reject(record, decision.summary())
        elif cancel_now:
            self.finish_now(record, "cancelled", "cancelled before it started")
        elif decision.needs_approval:
            waiting = replace(
                record,
                state="awaiting_approval",
                reason="waits for the site admin (policy.approval: manual)",
            )
            self.ledger.record(waiting)
            self.log.info(
                "task %s awaits approval (ptm agent pending)",
                task_id,
                extra={"task": task_id, "decision": "awaiting_approval"},
            )
        else:
            return Acceptance(verdict.task, record, snapshot)
        return None

    def _reject(self, record: StatusRecord, reason: str) -> None:
        self.finish_now(record, "rejected", reason)

    def finish_now(self, record: StatusRecord, state: State, reason: str) -> None:
        final = replace(record, state=state, reason=reason, finished_at=utc_now_text())
        self.ledger.record(final)
        self.log.info(
            "task %s %s: %s",
            record.task,
            state,
            reason,
            extra={"task": record.task, "decision": state, "reason": reason},
        )

    def task_of(self, snapshot: TaskSnapshot) -> Task:
        task, invalid = parse_task(snapshot)
        if task is None:
            assert invalid is not None
            raise invalid
        return task

    def accept(self, task: Task, record: StatusRecord, snapshot: TaskSnapshot) -> None:
        self._accept_all([Acceptance(task, record, snapshot)])

    def _accept_all(self, acceptances: list[Acceptance]) -> None:
        """Prepare each run, record every ``accepted`` with one move of the branch, and only
        then queue them (a run must not start before its acceptance is recorded)."""
        if not acceptances:
            return
        queued = []
        for task, record, snapshot in acceptances:
            prepare_run(self.workdir, task, snapshot, self.mirror.repo)
            queued.append(QueuedRun(task, replace(record, state="accepted"), None))
        self.ledger.record_all([q.record for q in queued])
        for run in queued:
            self.log.info(
                "task %s accepted (image %s)",
                run.task.id,
                run.task.image,
                extra={"task": run.task.id, "decision": "accepted"},
            )
            self.runs.add(run)

    # ---- running -------------------------------------------------------------------------

    def _run(self, queued: QueuedRun) -> None:
        task, record = queued.task, queued.record
        try:
            final = self.execution.run(
                task,
                record,
                attach_to=queued.attach,
                cancelled=lambda: self.runs.cancel_requested(task.id),
                concluded=lambda: self.runs.free(task.id),
            )
        except AgentStopping:
            return  # still open on the ledger: the next start resumes it
        except PtmError as exc:
            final = replace(record, state="crashed", reason=str(exc), finished_at=utc_now_text())
            self.ledger.record(final)
        finally:
            self.runs.free(task.id)
        self.log.info(
            "task %s %s%s",
            task.id,
            final.state,
            f": {final.reason}" if final.reason else "",
            extra={"task": task.id, "decision": final.state, "reason": final.reason},
        )
        self.wakeup.set()

    def _pull_progress(self, line: str) -> None:
        self.log.info("%s", line, extra={"decision": "pulling"})
