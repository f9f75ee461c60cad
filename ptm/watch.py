"""The agent's watch loop (``ptm agent run``): a cycle whenever the registry may have moved.

For a local registry, watchdog on the tasks branch's ref is the hint; polling stays the
backstop. Only a written ref can mean new work: the open, read and close events that the agent's
own ``ls-remote`` and ``fetch`` cause in the registry folder (and the pushes of results branches)
never wake it, so an idle agent sleeps. A failed cycle backs off before the next try.
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
    def __init__(self, event: threading.Event, refs: frozenset[str]) -> None:
        self._event = event
        self._refs = refs

    def on_any_event(self, event: FileSystemEvent) -> None:
        if written_path(event) in self._refs:
            self._event.set()


class RefsWatcher:
    """Sets ``event`` whenever the registry's ref for ``branch`` is written: the loose ref
    (git writes ``<ref>.lock``, then renames it) or ``packed-refs``.

    Only the ref's own folder is watched (not ``refs/heads/results/``, where every site pushes),
    and the git folder itself for ``packed-refs``. When watching is impossible (inotify limits),
    ``problem`` says why and the loop polls."""

    def __init__(self, registry: Path, branch: str, event: threading.Event) -> None:
        registry = registry.absolute()
        git_dir = registry / ".git" if (registry / ".git").is_dir() else registry
        self._git_dir = git_dir
        self._ref = git_dir / "refs" / "heads" / branch
        refs = {self._ref, git_dir / "packed-refs"}
        self._observer: Any = Observer()
        self._handler = _Wake(event, frozenset(os.path.normpath(r) for r in refs))
        self.problem: str | None = None

    def __enter__(self) -> RefsWatcher:
        if not (self._git_dir / "refs").is_dir():
            self.problem = f"{self._git_dir}: no refs folder"
            return self
        try:
            if self._ref.parent.is_dir():
                self._schedule(self._ref.parent, recursive=False)
            else:  # the branch's folder appears with its first loose ref
                self._schedule(self._git_dir / "refs", recursive=True)
            self._schedule(self._git_dir, recursive=False)
            self._observer.daemon = True
            self._observer.start()
        except OSError as exc:
            self.problem = f"cannot watch {self._git_dir}: {exc}"
            self._observer.unschedule_all()
        return self

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

    A registry or engine that is unreachable (at start or later) is retried with backoff;
    results committed meanwhile stay on the local results branch until a push goes through.
    """
    registry = agent.config.registry
    local = local_registry_path(registry.url)
    watcher = None
    if local is not None and local.exists():
        watcher = RefsWatcher(local, registry.branch, agent.wakeup)
    started, failures = False, 0
    with watcher or _NoWatcher():
        if watcher is not None and watcher.problem:
            agent.log.warning(
                "%s; polling every %ss instead",
                watcher.problem,
                agent.config.poll_interval,
                extra={"decision": "polling"},
            )
        while not stop.is_set():
            woken = agent.wakeup.is_set()
            agent.wakeup.clear()
            agent.log.debug(
                "cycle (%s)",
                "woken" if woken else "retry" if failures else "poll",
                extra={"decision": "cycle"},
            )
            try:
                if not started:
                    agent.start()
                    started = True
                agent.cycle()
                failures = 0
            except TamperingDetected as exc:
                agent.log.error("%s", exc, extra={"decision": "halted"})
            except PtmError as exc:
                failures += 1
                if stop.is_set():
                    break
                agent.log.warning(
                    "cycle failed (%d in a row), retrying in %.0fs: %s",
                    failures,
                    retry_delay(agent.config.poll_interval, failures),
                    exc,
                    extra={"decision": "cycle-failed"},
                )
            delay = retry_delay(agent.config.poll_interval, failures)
            # A backoff is not cut short by a wakeup (it is kept for the cycle after it).
            _sleep_until(agent.wakeup, stop, delay, wake_early=failures == 0)
    running = agent.hand_back() if started else 0
    if running:
        agent.log.info(
            "stopped; %d running container(s) handed back: the next start re-attaches",
            running,
            extra={"decision": "stopped"},
        )


class _NoWatcher:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


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
