"""The agent's watch loop (``ptm agent run``): a cycle whenever the registry may have moved.

For a local registry, watchdog on the tasks branch's ref is the hint, and for every registry an
admin's decision dropped in the work folder; polling stays the backstop. Only a written ref can
mean new work: the open, read and close events that the agent's own ``ls-remote`` and ``fetch``
cause in the registry folder (and the pushes of results branches) never wake it, so an idle
agent sleeps. A failed cycle backs off before the next try.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from watchdog.events import (
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from ptm import process
from ptm.agent import Agent
from ptm.decisions import decisions_dir
from ptm.errors import PtmError, TamperingDetected

# After SIGTERM, git calls in flight get this long to finish (a push of finished results
# usually does), then they are stopped, so the agent ends promptly even if a registry hangs.
STOP_GRACE = 2.0
# Only these reach the handler (watchdog 4+ leaves the others out of the inotify mask).
WRITE_EVENTS: list[type[FileSystemEvent]] = [FileCreatedEvent, FileModifiedEvent, FileMovedEvent]


def request_stop(stop: threading.Event) -> None:
    """What SIGTERM and SIGINT do to ``ptm agent run``: end the loop, and stop git calls
    (running or still to come) after STOP_GRACE. Safe in a signal handler."""
    stop.set()
    process.wind_down(STOP_GRACE)


def local_registry_path(url: str) -> Path | None:
    """The folder of a registry given as a path or file:// URL; None for a remote one."""
    if url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    if "://" in url or (":" in url.split("/")[0] and not url.startswith("/")):
        return None
    return Path(url)


def written_path(event: FileSystemEvent) -> str | None:
    """The file an event wrote (a move's destination), or None for reads, deletions and
    folders."""
    if event.is_directory or event.event_type not in {"created", "modified", "moved"}:
        return None
    target = event.dest_path if event.event_type == "moved" else event.src_path
    return os.path.normpath(os.fsdecode(target))


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event, files: frozenset[str], inbox: str) -> None:
        self._event = event
        self._files = files
        self._inbox = inbox
        self.hint = threading.Event()  # what woke the loop was the registry or a decision

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = written_path(event)
        if path is None:
            return
        in_inbox = str(Path(path).parent) == self._inbox and path.endswith(".json")
        if path in self._files or in_inbox:
            self.hint.set()
            self._event.set()


class WakeWatcher:
    """Sets ``event`` when a file is written that can mean new work: the tasks branch's ref of
    a local registry (git writes ``<ref>.lock``, then renames it; or ``packed-refs``), or an
    admin's decision dropped in the work folder (``ptm agent approve`` and the like).

    Only those folders are watched: the ref's own folder (not ``refs/heads/results/``, where
    every site pushes), the git folder for ``packed-refs``, the decisions folder. When watching
    is impossible (inotify limits), ``problem`` says why and the loop polls."""

    def __init__(
        self, event: threading.Event, *, registry: Path | None, branch: str, decisions: Path
    ) -> None:
        self._folders: list[tuple[Path, bool]] = []
        files: set[Path] = set()
        if registry is not None:
            registry = registry.absolute()
            git_dir = registry / ".git" if (registry / ".git").is_dir() else registry
            ref = git_dir / "refs" / "heads" / branch
            files |= {ref, git_dir / "packed-refs"}
            if ref.parent.is_dir():
                self._folders.append((ref.parent, False))
            else:  # the branch's folder appears with its first loose ref
                self._folders.append((git_dir / "refs", True))
            self._folders.append((git_dir, False))
        self._decisions = decisions.absolute()
        self._folders.append((self._decisions, False))
        self._observer: Any = Observer()
        paths = frozenset(os.path.normpath(f) for f in files)
        self._handler = _Wake(event, paths, os.path.normpath(self._decisions))
        self.problem: str | None = None

    def __enter__(self) -> WakeWatcher:
        try:
            self._decisions.mkdir(mode=0o700, parents=True, exist_ok=True)
            for folder, recursive in self._folders:
                self._schedule(folder, recursive=recursive)
            self._observer.daemon = True
            self._observer.start()
        except OSError as exc:
            self.problem = f"cannot watch {self._folders[0][0]}: {exc}"
            self._observer.unschedule_all()
        return self

    def take_hint(self) -> bool:
        """Whether the registry's ref or the decisions folder was written since last asked."""
        hinted = self._handler.hint.is_set()
        self._handler.hint.clear()
        return hinted

    def __exit__(self, *exc: object) -> None:
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=5)

    def _schedule(self, folder: Path, *, recursive: bool) -> None:
        try:
            self._observer.schedule(
                self._handler, str(folder), recursive=recursive, event_filter=WRITE_EVENTS
            )
        except TypeError:  # watchdog < 4 has no event_filter; the handler filters anyway
            self._observer.schedule(self._handler, str(folder), recursive=recursive)


MAX_RETRY_DELAY = 600.0


def retry_delay(poll_interval: float, failures: int) -> float:
    """Seconds to wait after ``failures`` failed cycles in a row: the poll interval, doubling
    with each failure, up to ten minutes (or the poll interval, if that is longer)."""
    if failures <= 0:
        return poll_interval
    backed_off: float = poll_interval * 2.0 ** (failures - 1)
    return min(backed_off, max(poll_interval, MAX_RETRY_DELAY))


def run_until_stopped(agent: Agent, stop: threading.Event) -> None:
    """The watch loop: a cycle whenever the registry may have moved, until ``stop`` is set.

    A run's end wakes the loop too, but only to push its result (``Agent.publish_results``):
    the registry is polled when the watcher saw it move or an admin decide, or when the poll
    interval is up. A registry or engine that is unreachable (at start or later) is retried
    with backoff; results committed meanwhile stay on the local results branch until a push
    goes through.
    """
    registry = agent.config.registry
    local = local_registry_path(registry.url)
    agent.workdir.prepare()  # the decisions folder is watched inside it
    watcher = WakeWatcher(
        agent.wakeup,
        registry=local if local is not None and local.exists() else None,
        branch=registry.branch,
        decisions=decisions_dir(agent.workdir),
    )
    started, failures = False, 0
    next_poll = time.monotonic()
    with watcher:
        if watcher.problem:
            agent.log.warning(
                "%s; polling every %ss instead",
                watcher.problem,
                agent.config.poll_interval,
                extra={"decision": "polling"},
            )
        while not stop.is_set():
            agent.wakeup.clear()
            hinted = watcher.take_hint()
            if started and failures == 0 and not hinted and time.monotonic() < next_poll:
                agent.publish_results()
            else:
                began = time.monotonic()
                started, failures = _cycle(agent, stop, started, failures, hinted)
                if stop.is_set():
                    break
                next_poll = began + retry_delay(agent.config.poll_interval, failures)
            wake_at = next_poll
            if agent.push_due is not None and failures == 0:
                wake_at = min(wake_at, agent.push_due)
            # A backoff is not cut short by a wakeup (it is kept for the cycle after it).
            _sleep_until(agent.wakeup, stop, wake_at - time.monotonic(), wake_early=failures == 0)
    running = agent.hand_back() if started else 0
    if running:
        agent.log.info(
            "stopped; %d running container(s) handed back: the next start re-attaches",
            running,
            extra={"decision": "stopped"},
        )


def _cycle(
    agent: Agent, stop: threading.Event, started: bool, failures: int, hinted: bool
) -> tuple[bool, int]:
    """One whole cycle (the first one starts the agent); (started, failures in a row)."""
    agent.log.debug(
        "cycle (%s)",
        "woken" if hinted else "retry" if failures else "poll",
        extra={"decision": "cycle"},
    )
    try:
        if not started:
            agent.start()
            started = True
        agent.cycle()
        return started, 0
    except TamperingDetected as exc:
        agent.log.error("%s", exc, extra={"decision": "halted"})
        return started, failures
    except PtmError as exc:
        failures += 1
        if not stop.is_set():
            agent.log.warning(
                "cycle failed (%d in a row), retrying in %.0fs: %s",
                failures,
                retry_delay(agent.config.poll_interval, failures),
                exc,
                extra={"decision": "cycle-failed"},
            )
        return started, failures


def _sleep_until(
    wakeup: threading.Event, stop: threading.Event, seconds: float, *, wake_early: bool
) -> None:
    deadline = time.monotonic() + seconds
    awaited = wakeup if wake_early else stop
    while not stop.is_set() and not (wake_early and wakeup.is_set()):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        awaited.wait(min(0.2, remaining))
