"""Image references, registry digests and pull progress: pure helpers for the backends."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ptm.runtimes.base import Progress

DOCKER_HUB_PREFIXES = ("docker.io/", "index.docker.io/", "registry-1.docker.io/")
THROTTLED = frozenset({"Downloading", "Extracting", "Waiting"})


def split_reference(image: str) -> tuple[str, str, bool]:
    """``name[:tag]`` or ``name[:tag]@sha256:…`` → (repository, tag or digest, pinned)."""
    if "@" in image:
        named, digest = image.split("@", 1)
        return strip_tag(named), digest, True
    repository = strip_tag(image)
    tag = image[len(repository) + 1 :] or "latest"
    return repository, tag, False


def strip_tag(name: str) -> str:
    """``host:port/a/b:tag`` → ``host:port/a/b`` (a colon before the last slash is a port)."""
    head, _, last = name.rpartition("/")
    if ":" not in last:
        return name
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def familiar(repository: str) -> str:
    """Docker Hub's long and short spellings as one: ``docker.io/library/x`` → ``x``."""
    for prefix in DOCKER_HUB_PREFIXES:
        if repository.startswith(prefix):
            repository = repository[len(prefix) :]
            break
    else:
        return repository
    return repository.removeprefix("library/")


def matching_repo_digest(
    repo_digests: Iterable[str], repository: str, digest: str | None
) -> str | None:
    """The ``name@sha256:…`` entry of an image for ``repository`` (and ``digest``, if given)."""
    for entry in repo_digests:
        name, _, found = entry.partition("@")
        if familiar(name) == familiar(repository) and digest in (None, found):
            return entry
    return None


class PullReporter:
    """Turns the engine's pull events into readable lines, at most one per layer every few
    seconds for download and extract progress; remembers the digest the pull reports."""

    def __init__(
        self,
        progress: Progress | None,
        *,
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.progress = progress
        self.every_s = every_s
        self.clock = clock
        self.digest: str | None = None
        self._last: dict[str, float] = {}

    def report(self, event: Mapping[str, Any]) -> None:
        status = str(event.get("status", "")).strip()
        if status.startswith("Digest: "):
            self.digest = status.removeprefix("Digest: ").strip()
        line = self._line(str(event.get("id", "")), status, str(event.get("progress", "")))
        if line and self.progress is not None:
            self.progress(line)

    def _line(self, layer: str, status: str, detail: str) -> str | None:
        if not status:
            return None
        if status in THROTTLED:
            now = self.clock()
            if now - self._last.get(layer, -self.every_s) < self.every_s:
                return None
            self._last[layer] = now
        text = f"{status} {detail}".strip()
        return f"{layer}: {text}" if layer else text
