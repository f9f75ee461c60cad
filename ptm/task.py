"""The Task value type: one validated ``tasks/<task-id>/task.yaml``, read-only once loaded.

Memory sizes (``resources.memory`` here, ``limits.memory`` in a site config) are bytes, or a
number followed by ``k``, ``m`` or ``g`` in either case; the units are binary, as Docker's are
(``1k`` = 1024 bytes, ``512m`` = 512 MiB, ``2g`` = 2 GiB).
"""

from __future__ import annotations

import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ptm.errors import InvalidDocument, Problem
from ptm.names import check_name, is_valid_name
from ptm.schema import FILE_PATH, load_yaml_file, validate

TASKS_DIR = "tasks"
TASK_FILE = "task.yaml"
CANCEL_FILE = "cancel.yaml"
EVERY_SITE = "*"

_MEMORY = re.compile(r"([1-9][0-9]{0,14})([kKmMgG]?)")  # no IGNORECASE: it lets in 'K' (Kelvin)
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
MIN_MEMORY_BYTES = 6 * 1024**2  # Docker's own floor; below it an engine refuses or ignores it
MIN_CPUS = 0.01  # 10^7 NanoCpus; a value that rounds to 0 would mean "no limit"


def parse_memory(text: str) -> int:
    """Bytes in ``text`` ("1048576", "1024k", "512m", "2G"); ValueError when it is not a size."""
    match = _MEMORY.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a memory size (bytes, or a number with k, m or g)")
    return int(match[1]) * _MEMORY_UNITS[match[2].lower()]


def task_source(task_id: str, file_name: str = TASK_FILE) -> str:
    """How errors name a task's file: ``tasks/<task-id>/task.yaml``."""
    return f"{TASKS_DIR}/{task_id}/{file_name}"


def freeze(value: Any) -> Any:
    """A read-only deep copy: mappings become MappingProxyType, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(item) for item in value)
    return value


@dataclass(frozen=True)
class Task:
    """What a researcher asked for. ``config`` is read-only (nested lists become tuples)."""

    id: str
    image: str
    sites: tuple[str, ...]
    command: tuple[str, ...] | None = None
    config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    timeout: int | None = None
    memory_bytes: int | None = None
    cpus: float | None = None
    deliver_sftp: str | None = None
    description: str | None = None
    encrypt: bool = False  # log and outputs encrypted to the submitter's key (ptm.sealed)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", freeze(self.config))

    def targets(self, site: str) -> bool:
        """True when this task asks ``site`` to run it (by name, or through ``*``)."""
        return EVERY_SITE in self.sites or site in self.sites

    @property
    def is_pinned(self) -> bool:
        """True when the image is pinned to a digest (``name@sha256:…``)."""
        return "@sha256:" in self.image

    @classmethod
    def from_document(
        cls, task_id: str, document: Mapping[str, Any], *, source: str | None = None
    ) -> Task:
        """Validate ``document`` (a parsed task.yaml) and build the Task; InvalidDocument if not."""
        name = source if source is not None else task_source(str(task_id))
        check_name(task_id, kind="task id", source=name)
        validate(document, "task", source=name)
        _check_names(document, source=name)
        resources = document.get("resources", {})
        _check_resources(resources, source=name)
        command = document.get("command")
        return cls(
            id=task_id,
            image=document["image"],
            sites=tuple(document["sites"]),
            command=tuple(command) if command is not None else None,
            config=document.get("config", {}),
            timeout=document.get("timeout"),
            memory_bytes=_memory_or_none(resources.get("memory")),
            cpus=float(resources["cpus"]) if "cpus" in resources else None,
            deliver_sftp=document.get("deliver", {}).get("sftp"),
            description=document.get("description"),
            encrypt=document.get("encrypt", False),
        )


@dataclass(frozen=True)
class Cancellation:
    """A validated ``tasks/<task-id>/cancel.yaml``."""

    task_id: str
    reason: str
    requested_by: str | None = None


def load_task(task_dir: Path, *, task_id: str | None = None) -> Task:
    """Load and validate ``task_dir/task.yaml``; the id defaults to the folder's name."""
    name = task_id if task_id is not None else task_dir.name
    source = task_source(name)
    check_name(name, kind="task id", source=source)
    _refuse_symlinked_dir(task_dir, source=source)
    document = load_yaml_file(task_dir / TASK_FILE, source=source)
    return Task.from_document(name, document, source=source)


def load_cancel(task_dir: Path, *, task_id: str | None = None) -> Cancellation | None:
    """The task's validated cancel.yaml, or None when the task is not cancelled."""
    name = task_id if task_id is not None else task_dir.name
    source = task_source(name, CANCEL_FILE)
    check_name(name, kind="task id", source=source)
    _refuse_symlinked_dir(task_dir, source=source)
    path = task_dir / CANCEL_FILE
    if not path.exists() and not path.is_symlink():
        return None
    document = load_yaml_file(path, source=source)
    validate(document, "cancel", source=source)
    return Cancellation(name, document["reason"], document.get("requested_by"))


def _check_names(document: Mapping[str, Any], *, source: str) -> None:
    # The schema's patterns say the same; names.py is the authority on what may become a path.
    for index, site in enumerate(document["sites"]):
        if site != EVERY_SITE and not is_valid_name(site):
            check_name(site, kind="site name", source=source, path=f"sites[{index}]")
    if "deliver" in document:
        check_name(
            document["deliver"]["sftp"], kind="target name", source=source, path="deliver.sftp"
        )


def _check_resources(resources: Mapping[str, Any], *, source: str) -> None:
    """Task values must never reach the engine as "no limit": refuse what would."""
    memory = resources.get("memory")
    if memory is not None and parse_memory(memory) < MIN_MEMORY_BYTES:
        message = f"{memory!r} is below the smallest limit an engine enforces, 6m"
        raise InvalidDocument([Problem(source, "resources.memory", "minimum", message)])
    cpus = resources.get("cpus")
    if cpus is not None and cpus < MIN_CPUS:
        message = f"{cpus!r} is below {MIN_CPUS}, which an engine would treat as no limit"
        raise InvalidDocument([Problem(source, "resources.cpus", "minimum", message)])


def _memory_or_none(text: str | None) -> int | None:
    return parse_memory(text) if text is not None else None


def _refuse_symlinked_dir(task_dir: Path, *, source: str) -> None:
    # A task folder that is a symlink could point anywhere on the machine that reads it.
    try:
        mode = task_dir.lstat().st_mode
    except FileNotFoundError:
        raise InvalidDocument(
            [Problem(source, FILE_PATH, "exists", "task folder not found")]
        ) from None
    if stat.S_ISLNK(mode):
        message = "the task folder is a symbolic link; only real folders are read"
        raise InvalidDocument([Problem(source, FILE_PATH, "symlink", message)])
    if not stat.S_ISDIR(mode):
        raise InvalidDocument([Problem(source, FILE_PATH, "folder", "the task is not a folder")])
