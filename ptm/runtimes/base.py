"""What ptm asks of a container runtime, and the values that cross that boundary.

A backend (``docker.py`` first) implements ``Runtime``; the agent only sees these types, so it
runs and tests against any backend without importing its library. Every backend applies the
same sandbox to every container (see DESIGN.md, "What a container sees"); nothing in a
``ContainerSpec`` can loosen it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

PullPolicy = Literal["always", "if-missing", "never"]
Progress = Callable[[str], None]

DEFAULT_USER = "65534:65534"
DEFAULT_TMPFS_BYTES = 64 * 1024**2
DEFAULT_LOG_BYTES = 1024**2

# The algorithm contract's paths inside the container.
CONFIG_PATH = "/ptm/config/config.yaml"
INPUT_PATH = "/ptm/input"
OUTPUT_PATH = "/ptm/output"

# Labels every ptm container carries; re-attaching after an agent restart relies on them.
LABEL_MANAGED = "ptm.managed"
LABEL_SITE = "ptm.site"
LABEL_TASK = "ptm.task"
LABEL_IMAGE = "ptm.image"
LABEL_LOG_BYTES = "ptm.log-bytes"


@dataclass(frozen=True)
class Mount:
    """A host folder (or file) the site shows its containers; always read-only."""

    source: Path
    target: str


@dataclass(frozen=True)
class ContainerSpec:
    """One run of one task at one site: what to run, what it sees, and its limits."""

    task_id: str
    site: str
    image: str  # as the task names it: name[:tag] or name@sha256:…
    command: tuple[str, ...] | None  # None: the image's own command
    environment: Mapping[str, str]  # the site's variables; PTM_* are added and win
    config_file: Path  # read-only at CONFIG_PATH
    input_dir: Path | None  # read-only at INPUT_PATH
    output_dir: Path  # writable at OUTPUT_PATH
    data_mounts: tuple[Mount, ...] = ()
    memory_bytes: int = 2 * 1024**3
    cpus: float = 1.0
    pids: int = 256
    network: str = "none"  # or a network the site controls; never "host"
    user: str = DEFAULT_USER
    tmpfs_bytes: int = DEFAULT_TMPFS_BYTES
    log_bytes: int = DEFAULT_LOG_BYTES
    labels: Mapping[str, str] = field(default_factory=dict)  # extra; ptm.* ones always win
    timeout_s: float | None = None  # the task's time limit, for a scheduler's own (Slurm --time)


@dataclass(frozen=True)
class ImageRef:
    """The exact image a task runs: its local ID, and its registry digest when it has one."""

    image_id: str  # sha256:…
    repo_digest: str | None  # name@sha256:…


@dataclass(frozen=True)
class ContainerRef:
    """A started container, enough to wait for, kill or remove it (also after a restart)."""

    container_id: str
    task_id: str
    site: str


@dataclass(frozen=True)
class Outcome:
    """How a container ended.

    ``exit_code`` is None when ptm killed it (timeout or cancel). ``log`` is stdout and stderr,
    interleaved, capped at the spec's ``log_bytes``: when longer, its last bytes are kept behind
    a first line that says so (``TRUNCATION_MARKER``).
    """

    exit_code: int | None
    timed_out: bool = False
    cancelled: bool = False
    oom_killed: bool = False
    log: bytes = b""


TRUNCATION_MARKER = b"[ptm] log truncated"


class LogCap:
    """Keeps the last ``limit`` bytes of a stream; says so in a first line when it dropped any."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.seen = 0
        self._tail = bytearray()

    def add(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        self._tail += chunk
        if len(self._tail) > 2 * self.limit:  # trim now and then, not at every chunk
            del self._tail[: len(self._tail) - self.limit]

    def value(self) -> bytes:
        if self.seen <= self.limit:
            return bytes(self._tail)
        kept = bytes(self._tail[len(self._tail) - self.limit :]) if self.limit else b""
        dropped = self.seen - len(kept)
        marker = TRUNCATION_MARKER + (
            f": {dropped} earlier bytes dropped, the last {len(kept)} follow\n".encode()
        )
        return marker + kept


class Runtime(Protocol):
    """A container engine, as ptm uses it. Errors: RuntimeUnavailable, ContainerError."""

    def ping(self) -> str:
        """The engine's version; RuntimeUnavailable when it cannot be reached."""
        ...

    def ensure_image(
        self, image: str, *, policy: PullPolicy, progress: Progress | None = None
    ) -> ImageRef:
        """Make ``image`` present by ``policy``; a ``name@sha256:…`` resolves to that digest."""
        ...

    def start(self, spec: ContainerSpec, image: ImageRef) -> ContainerRef:
        """Create and start the sandboxed container for ``spec`` from exactly ``image``."""
        ...

    def wait(
        self,
        ref: ContainerRef,
        *,
        timeout_s: float,
        cancelled: Callable[[], bool] | None = None,
    ) -> Outcome:
        """Wait for the end; kill at ``timeout_s`` after its start or once ``cancelled()``."""
        ...

    def find_containers(self, site: str) -> list[ContainerRef]:
        """ptm's containers of ``site`` not yet removed, running or ended (for re-attaching)."""
        ...

    def find_running(self, site: str) -> list[ContainerRef]:
        """ptm's containers of ``site`` that are still running."""
        ...

    def kill(self, ref: ContainerRef) -> None:
        """Stop it now; a container that already ended is fine."""
        ...

    def remove(self, ref: ContainerRef) -> None:
        """Remove it (killing it first if needed); one already gone is fine."""
        ...
