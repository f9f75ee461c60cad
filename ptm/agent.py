"""The site agent: sync → plan → policy → run → publish, once per cycle.

A cycle's cost grows with what changed on the tasks branch since the last processed commit, never
with the registry's size: an idle cycle is one ``ls-remote`` and, when results are waiting, one
push. State lives on the results branch (committed before anything is pushed) plus the last
processed commit in the work directory, so an agent killed at any moment resumes where it was.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from ptm import __version__
from ptm.decisions import AdminDecision, forget_decision, pending_decisions
from ptm.errors import PtmError, RegistryError, TamperingDetected
from ptm.execution import TaskExecution, prepare_run
from ptm.judgement import judge
from ptm.ledger import Ledger
from ptm.runtimes.base import ContainerRef, Runtime
from ptm.siteconfig import SiteConfig
from ptm.status import State, StatusRecord, utc_now_text
from ptm.sync import TaskChange, TasksMirror
from ptm.task import Task, load_task
from ptm.workdir import WorkDir


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
        self.mirror = TasksMirror(
            self.workdir.tasks_clone,
            url=registry.url,
            branch=registry.branch,
            ssh_key=registry.ssh_key,
        )
        self.ledger = Ledger(
            self.workdir.results_clone,
            url=registry.url,
            site=config.site,
            ssh_key=registry.ssh_key,
            sign_key=config.signing_key,
        )
        self.execution = TaskExecution(
            site=config,
            runtime=runtime,
            ledger=self.ledger,
            workdir=self.workdir,
            progress=self._pull_progress,
        )
        # Daemon threads: on shutdown the agent hands running containers back (they keep their
        # labels and are re-attached at the next start) instead of waiting hours for them.
        self._running: dict[str, threading.Thread] = {}
        self._queue: list[tuple[Task, StatusRecord, ContainerRef | None]] = []
        self._cancel: set[str] = set()
        self._lock = threading.Lock()
        self.wakeup = threading.Event()
        self.log = logging.getLogger(f"ptm.agent.{config.site}")

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Clone what is missing and resume work an earlier agent left unfinished."""
        self.mirror.ensure_clone()
        self.ledger.ensure()
        self._resume_open_tasks()

    def hand_back(self) -> int:
        """Stop: push what is committed, leave running containers for the next start."""
        with self._lock:
            self._queue.clear()
            running = len(self._running)
        self.publish()
        return running

    def once(self) -> CycleReport:
        """One cycle, then wait for every task it started and push the results."""
        report = self.cycle()
        self.drain()
        pushed = self.publish()
        return replace(report, pushed=report.pushed or pushed)

    def drain(self) -> None:
        while True:
            with self._lock:
                self._start_queued()
                threads = list(self._running.values())
            if not threads:
                return
            for thread in threads:
                thread.join()
            self._reap()

    # ---- one cycle -----------------------------------------------------------------------

    def cycle(self) -> CycleReport:
        self._reap()
        self._apply_admin_decisions()
        state = self.workdir.load_state()
        if state.halted:
            self.log.error("halted: %s", state.halted, extra={"decision": "halted"})
            return CycleReport(None, 0, 0, self.publish(), idle=True)
        head = self.mirror.remote_head()
        if head is None:
            raise RegistryError(
                f"{self.config.registry.url}: the tasks branch "
                f"{self.config.registry.branch!r} does not exist"
            )
        if head == state.processed:
            with self._lock:
                started = self._start_queued()
            return CycleReport(head, 0, started, self.publish(), idle=started == 0)
        head = self.mirror.fetch()
        try:
            self.mirror.check_not_rewritten(state.processed, head)
        except TamperingDetected as exc:
            self.workdir.save_state(state.with_halt(str(exc)))
            self.log.error("%s", exc, extra={"decision": "halted"})
            return CycleReport(head, 0, 0, self.publish(), idle=True)
        changes = self.mirror.changes(state.processed, head)
        new = sum(1 for c in changes if c.is_new)
        texts = self.mirror.task_texts([c.task_id for c in changes if c.task_file], head)
        for change in changes:
            self._handle(change, head, texts.get(change.task_id))
        self.workdir.save_state(self.workdir.load_state().with_processed(head))
        with self._lock:
            started = self._start_queued()
        return CycleReport(head, new, started, self.publish(), idle=False)

    def publish(self) -> bool:
        try:
            return self.ledger.push()
        except RegistryError as exc:
            self.log.warning(
                "results not pushed yet (kept locally, retried next cycle): %s",
                exc,
                extra={"decision": "push-deferred"},
            )
            return False

    # ---- planning ------------------------------------------------------------------------

    def _handle(self, change: TaskChange, head: str, text: bytes | None) -> None:
        existing = self.ledger.status_of(change.task_id)
        if existing is not None:
            self._handle_known(change, existing, head)
            return
        if text is None and not self.mirror.has_task(change.task_id, head):
            return  # deleted, or only files without a task.yaml: nothing to act on
        self._receive(change.task_id, head, text=text, cancel_now=change.cancel_added)

    def _handle_known(self, change: TaskChange, existing: StatusRecord, head: str) -> None:
        if change.alters_task:
            warning = (
                f"task {change.task_id} was changed at {head[:12]} after this site acted on it "
                f"({existing.state}, task commit {existing.task_commit[:12]}); the change is "
                "ignored"
            )
            self.log.error("%s", warning, extra={"task": change.task_id, "decision": "tampering"})
            self.workdir.save_state(self.workdir.load_state().with_warning(warning))
        if change.cancel_added and not existing.is_final:
            self._request_cancel(change.task_id, existing)

    def _receive(self, task_id: str, head: str, *, text: bytes | None, cancel_now: bool) -> None:
        verdict = judge(self.mirror, self.config, task_id, head, text=text)
        decision = verdict.decision
        if not decision.for_this_site and verdict.invalid is not None:
            self.log.info(
                "task %s ignored: it is invalid and does not readably ask for this site: %s",
                task_id,
                verdict.invalid.problems[0],
                extra={"task": task_id, "decision": "ignored"},
            )
            return
        if not decision.for_this_site:
            self.log.debug("task %s is not for this site", task_id, extra={"task": task_id})
            return
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
            self._finish_now(record, "cancelled", "cancelled before it started")
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
            self._accept(verdict.task, record, verdict.task_dir)

    def _apply_admin_decisions(self) -> None:
        for decision in pending_decisions(self.workdir):
            record = self.ledger.status_of(decision.task_id)
            if record is None or record.state not in {"awaiting_approval", "reviewing"}:
                state = record.state if record else "unknown here"
                self.log.warning(
                    "decision %s for task %s ignored: the task is %s",
                    decision.verdict,
                    decision.task_id,
                    state,
                    extra={"task": decision.task_id},
                )
            else:
                self._apply(decision, record)
            forget_decision(self.workdir, decision.task_id)

    def _apply(self, decision: AdminDecision, record: StatusRecord) -> None:
        task_id, by = decision.task_id, decision.decided_by
        extra = {"task": task_id, "decision": decision.verdict, "reason": decision.reason}
        if decision.verdict == "deny":
            self.execution.discard_held(task_id)
            denied = replace(
                record,
                state="denied",
                decided_by=by,
                finished_at=utc_now_text(),
                reason=f"denied by the site admin: {decision.reason}",
            )
            self.ledger.record(denied)
        elif record.state == "reviewing" and decision.verdict == "release":
            self.execution.release(task_id, decided_by=by)
        elif record.state == "awaiting_approval" and decision.verdict == "approve":
            task_dir = self.mirror.materialize(task_id, record.task_commit)
            task = load_task(task_dir, task_id=task_id)
            self._accept(task, replace(record, reason=None, decided_by=by), task_dir)
        else:
            self.log.warning(
                "cannot %s task %s: it is %s", decision.verdict, task_id, record.state, extra=extra
            )
            return
        self.log.info("task %s: %s by %s", task_id, decision.verdict, by, extra=extra)

    def _reject(self, record: StatusRecord, reason: str) -> None:
        self._finish_now(record, "rejected", reason)

    def _finish_now(self, record: StatusRecord, state: State, reason: str) -> None:
        final = replace(record, state=state, reason=reason, finished_at=utc_now_text())
        self.ledger.record(final)
        self.log.info(
            "task %s %s: %s",
            record.task,
            state,
            reason,
            extra={"task": record.task, "decision": state, "reason": reason},
        )

    def _accept(self, task: Task, record: StatusRecord, task_dir: Path | None) -> None:
        accepted = replace(record, state="accepted")
        prepare_run(
            self.workdir, task, task_dir or self.mirror.materialize(task.id, record.task_commit)
        )
        self.ledger.record(accepted)
        self.log.info(
            "task %s accepted (image %s)",
            task.id,
            task.image,
            extra={"task": task.id, "decision": "accepted"},
        )
        with self._lock:
            self._queue.append((task, accepted, None))

    def _request_cancel(self, task_id: str, existing: StatusRecord) -> None:
        with self._lock:
            queued = [q for q in self._queue if q[0].id == task_id]
            self._queue = [q for q in self._queue if q[0].id != task_id]
            self._cancel.add(task_id)
        if queued or task_id not in self._running:
            self._finish_now(existing, "cancelled", "cancelled before it started")
        else:
            self.log.info(
                "task %s: cancel requested, stopping its container",
                task_id,
                extra={"task": task_id, "decision": "cancelling"},
            )

    # ---- running -------------------------------------------------------------------------

    def _start_queued(self) -> int:
        started = 0
        while self._queue and len(self._running) < self.config.limits.max_parallel:
            task, record, attach = self._queue.pop(0)
            thread = threading.Thread(
                target=self._run,
                args=(task, record, attach),
                name=f"ptm-run-{task.id}",
                daemon=True,
            )
            self._running[task.id] = thread
            thread.start()
            started += 1
        return started

    def _run(self, task: Task, record: StatusRecord, attach: ContainerRef | None) -> None:
        try:
            final = self.execution.run(
                task, record, attach_to=attach, cancelled=lambda: task.id in self._cancel
            )
        except PtmError as exc:
            final = replace(record, state="crashed", reason=str(exc), finished_at=utc_now_text())
            self.ledger.record(final)
        self.log.info(
            "task %s %s%s",
            task.id,
            final.state,
            f": {final.reason}" if final.reason else "",
            extra={"task": task.id, "decision": final.state, "reason": final.reason},
        )
        self.wakeup.set()

    def _reap(self) -> None:
        with self._lock:
            for task_id, thread in list(self._running.items()):
                if not thread.is_alive():
                    del self._running[task_id]
                    self._cancel.discard(task_id)

    def _resume_open_tasks(self) -> None:
        containers = {ref.task_id: ref for ref in self.runtime.find_containers(self.config.site)}
        for record in self.ledger.open_tasks():
            container = containers.get(record.task)
            if record.state in {"awaiting_approval", "reviewing"}:
                continue
            try:
                task_dir = self.mirror.materialize(record.task, record.task_commit)
                task = load_task(task_dir, task_id=record.task)
            except PtmError as exc:
                self._finish_now(record, "crashed", f"cannot resume: {exc}")
                continue
            if container is None and record.state == "running":
                self._finish_now(
                    record,
                    "crashed",
                    "the container is gone (the agent or the "
                    "host stopped while it ran); not run again",
                )
                continue
            if container is None:
                prepare_run(self.workdir, task, task_dir)
            self.log.info(
                "task %s: resuming (%s%s)",
                record.task,
                record.state,
                ", re-attaching to its container" if container else "",
                extra={"task": record.task, "decision": "resumed"},
            )
            self._queue.append((task, record, container))

    def _pull_progress(self, line: str) -> None:
        self.log.info("%s", line, extra={"decision": "pulling"})
