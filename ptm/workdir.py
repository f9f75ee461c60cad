"""The agent's work directory: clones, run folders, its small state file and its lock."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ptm.errors import ConfigError, PtmError

STATE_FILE = "state.json"
MAX_WARNINGS = 50


@dataclass(frozen=True)
class AgentState:
    """What the agent remembers between cycles; the results branch holds everything else."""

    processed: str | None = None
    halted: str | None = None
    warnings: tuple[str, ...] = ()  # tamper evidence the admin should see, newest last

    def with_processed(self, commit: str) -> AgentState:
        return replace(self, processed=commit)

    def with_warning(self, text: str) -> AgentState:
        return replace(self, warnings=(*self.warnings, text)[-MAX_WARNINGS:])

    def with_halt(self, reason: str | None) -> AgentState:
        return replace(self, halted=reason)


@dataclass(frozen=True)
class WorkDir:
    root: Path

    @property
    def tasks_clone(self) -> Path:
        return self.root / "registry"

    @property
    def results_clone(self) -> Path:
        """The agent's own bare repository of ``results/<site>`` (see ``ptm.ledger``)."""
        return self.root / "ledger.git"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run_dir(self, task_id: str) -> Path:
        return self.runs / task_id

    def prepare(self) -> None:
        """Create the work directory, readable by this agent only: its run folders and held
        results must not be reachable (or plantable) by other users of the host."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.runs.mkdir(mode=0o700, exist_ok=True)

    def load_state(self) -> AgentState:
        path = self.root / STATE_FILE
        if not path.exists():
            return AgentState()
        try:
            document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            warnings = tuple(str(w) for w in document.get("warnings", []))
            return AgentState(document.get("processed"), document.get("halted"), warnings)
        except (ValueError, AttributeError) as exc:
            raise PtmError(
                f"{path}: unreadable agent state ({exc}); move it away to re-sync"
            ) from exc

    def save_state(self, state: AgentState) -> None:
        write_atomically(self.root / STATE_FILE, json.dumps(asdict(state), indent=2) + "\n")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One agent per work directory: a second one fails at once instead of racing."""
        self.prepare()
        with open(self.root / "agent.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise ConfigError(
                    f"{self.root}: another ptm agent is using this work directory"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
