"""A hint that a local registry's refs moved (watchdog); polling stays the backstop."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer


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
