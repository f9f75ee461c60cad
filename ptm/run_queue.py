"""The agent's run slots: accepted tasks wait here until one of ``max_parallel`` slots is free.

Each run is a daemon thread: on shutdown the agent hands running containers back (they keep
their labels and are re-attached at the next start) instead of waiting hours for them. A run
frees its slot as soon as its final record is committed (``free``), so the next queued task
starts at once, not at the next cycle; it then still removes its container, which ``wait``
waits for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ptm.runtimes.base import ContainerRef
from ptm.status import StatusRecord
from ptm.task import Task


@dataclass(frozen=True)
class QueuedRun:
    task: Task
    record: StatusRecord
    attach: ContainerRef | None  # a container an earlier agent left running, to re-attach to


class RunQueue:
    def __init__(
        self,
        max_parallel: int,
        run: Callable[[QueuedRun], None],
        stopping: threading.Event,
    ) -> None:
        self.max_parallel = max_parallel
        self._run = run
        self._stopping = stopping
        self._queue: list[QueuedRun] = []
        self._running: dict[str, threading.Thread] = {}
        self._cancel: set[str] = set()
        self._ending: list[threading.Thread] = []  # runs that gave up their slot, not yet done
        self._lock = threading.Lock()

    def add(self, run: QueuedRun) -> None:
        with self._lock:
            self._queue.append(run)

    def free_slots(self) -> int:
        """Slots a run could start in now (none while runs wait for one)."""
        with self._lock:
            return max(0, self.max_parallel - len(self._running) - len(self._queue))

    def busy(self) -> bool:
        """Whether a run is going on or waits for a slot."""
        with self._lock:
            return bool(self._running or self._queue)

    def start_ready(self) -> int:
        """Start queued runs while slots are free; how many were started."""
        with self._lock:
            return self._start_ready()

    def _start_ready(self) -> int:
        started = 0
        while self._queue and len(self._running) < self.max_parallel:
            queued = self._queue.pop(0)
            thread = threading.Thread(
                target=self._run, args=(queued,), name=f"ptm-run-{queued.task.id}", daemon=True
            )
            self._running[queued.task.id] = thread
            thread.start()
            started += 1
        return started

    def free(self, task_id: str) -> None:
        """Called by a run once its final record is committed: its slot goes to the next."""
        with self._lock:
            thread = threading.current_thread()
            if self._running.get(task_id) is thread:
                del self._running[task_id]
                self._cancel.discard(task_id)
                self._ending.append(thread)  # still removing its container: ``wait`` waits
            if not self._stopping.is_set():
                self._start_ready()

    def withdraw(self, task_id: str) -> tuple[list[QueuedRun], bool]:
        """Mark ``task_id`` cancelled and take it out of the queue: the runs it had queued,
        and whether it is running now (its run then sees ``cancel_requested``)."""
        with self._lock:
            queued = [q for q in self._queue if q.task.id == task_id]
            self._queue = [q for q in self._queue if q.task.id != task_id]
            self._cancel.add(task_id)
            return queued, task_id in self._running

    def cancel_requested(self, task_id: str) -> bool:
        return task_id in self._cancel

    def clear(self) -> int:
        """Forget what waits (it stays open on the ledger); how many runs are going on."""
        with self._lock:
            self._queue.clear()
            return len(self._running)

    def reap(self) -> None:
        with self._lock:
            self._ending = [t for t in self._ending if t.is_alive()]
            for task_id, thread in list(self._running.items()):
                if not thread.is_alive():
                    del self._running[task_id]
                    self._cancel.discard(task_id)

    def wait(self) -> None:
        """Run everything queued and wait until every run has ended."""
        while True:
            with self._lock:
                self._start_ready()
                threads = [*self._running.values(), *self._ending]
            if not threads:
                return
            for thread in threads:
                thread.join()
            self.reap()
