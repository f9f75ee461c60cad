"""The agent's watch loop (``ptm agent run``): a cycle whenever the registry may have moved.

For a local registry, watchdog on its refs is the hint; polling stays the backstop, and failures
back off."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ptm.agent import Agent
from ptm.errors import PtmError, TamperingDetected


def local_registry_path(url: str) -> Path | None:
    """The folder of a registry given as a path or file:// URL; None for a remote one."""
    if url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    if "://" in url or (":" in url.split("/")[0] and not url.startswith("/")):
        return None
    return Path(url)


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._event.set()


class RefsWatcher:
    """Sets ``event`` whenever something under the registry's refs (or packed-refs) changes."""

    def __init__(self, registry: Path, event: threading.Event) -> None:
        git_dir = registry / ".git" if (registry / ".git").is_dir() else registry
        self._git_dir = git_dir
        self._observer: Any = Observer()
        self._handler = _Wake(event)

    def __enter__(self) -> RefsWatcher:
        if (self._git_dir / "refs").is_dir():
            self._observer.schedule(self._handler, str(self._git_dir / "refs"), recursive=True)
            self._observer.schedule(self._handler, str(self._git_dir), recursive=False)
            self._observer.daemon = True
            self._observer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=5)


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
    local = local_registry_path(agent.config.registry.url)
    watcher = RefsWatcher(local, agent.wakeup) if local is not None and local.exists() else None
    started, failures = False, 0
    with watcher or _NoWatcher():
        while not stop.is_set():
            agent.wakeup.clear()
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
                agent.log.warning(
                    "cycle failed (%d in a row), retrying in %.0fs: %s",
                    failures,
                    retry_delay(agent.config.poll_interval, failures),
                    exc,
                    extra={"decision": "cycle-failed"},
                )
            delay = retry_delay(agent.config.poll_interval, failures)
            _sleep_until(agent.wakeup, stop, delay)
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


def _sleep_until(wakeup: threading.Event, stop: threading.Event, seconds: float) -> None:
    waited = 0.0
    while waited < seconds and not stop.is_set() and not wakeup.is_set():
        wakeup.wait(0.2)
        waited += 0.2
