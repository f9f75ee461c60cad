"""A result's ``status.yaml``: what one site did with one task, as a frozen record.

States (``State``): ``received`` then ``rejected``, or ``accepted`` (after
``awaiting_approval`` → ``denied`` when approval is manual), ``pulling``, ``running``, and one of
``completed``, ``failed``, ``timed_out``, ``cancelled``, ``crashed``. ``reviewing`` holds
finished results while a site with ``release: manual`` looks at them. States are plain strings
(a Literal), so ``replace(record, state="running")`` type-checks and prints as itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

from ptm import __version__
from ptm.names import check_name
from ptm.schema import load_yaml_file, validate

State = Literal[
    "received",
    "rejected",
    "awaiting_approval",
    "denied",
    "accepted",
    "pulling",
    "running",
    "reviewing",
    "completed",
    "failed",
    "timed_out",
    "cancelled",
    "crashed",
]
STATES: tuple[State, ...] = get_args(State)
FINAL_STATES: frozenset[State] = frozenset(
    ("rejected", "denied", "completed", "failed", "timed_out", "cancelled", "crashed")
)
OPEN_STATES: frozenset[State] = frozenset(STATES) - FINAL_STATES
AGENT = f"ptm {__version__}"

# Key order of status.yaml, as DESIGN shows it; keys added later go after their neighbours.
_KEYS = (
    "ptm",
    "task",
    "site",
    "state",
    "reason",
    "task_commit",
    "submitted_by",
    "decided_by",
    "image",
    "image_id",
    "image_digest",
    "exit_code",
    "received_at",
    "started_at",
    "finished_at",
    "outputs",
    "skipped",
    "encrypted_to",
    "output_count",
    "output_bytes",
    "delivered_to",
    "agent",
)
# Written only when set: a result that is not encrypted looks as it always did.
_ENCRYPTION_KEYS = frozenset({"encrypted_to", "output_count", "output_bytes"})


def utc_now_text(now: datetime | None = None) -> str:
    """``now`` (default: this moment) as RFC 3339 UTC to the second: ``2026-11-29T10:00:00Z``."""
    moment = now if now is not None else datetime.now(timezone.utc)
    if moment.tzinfo is None:
        raise ValueError("utc_now_text needs an aware datetime")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_final(state: str) -> bool:
    """True when a task in ``state`` will not change again at that site."""
    return state in FINAL_STATES


@dataclass(frozen=True)
class StatusRecord:
    """One ``results/<task>/<site>/status.yaml``.

    ``outputs`` entries are mappings ``{path, bytes, sha256}`` and ``skipped`` entries
    ``{path, reason}`` (paths relative to the result folder, e.g. ``output/summary.csv``).
    """

    task: str
    site: str
    state: State
    task_commit: str
    received_at: str
    reason: str | None = None
    submitted_by: str | None = None
    decided_by: str | None = None
    image: str | None = None
    image_id: str | None = None
    image_digest: str | None = None
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    outputs: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)
    skipped: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)
    encrypted_to: tuple[str, ...] = ()  # key fingerprints; see ptm.sealed
    output_count: int | None = None
    output_bytes: int | None = None
    delivered_to: str | None = None
    agent: str = AGENT

    def __post_init__(self) -> None:
        for name in ("outputs", "skipped"):
            entries = tuple(MappingProxyType(dict(entry)) for entry in getattr(self, name))
            object.__setattr__(self, name, entries)

    @property
    def is_final(self) -> bool:
        return is_final(self.state)

    def to_document(self, *, source: str = "status.yaml") -> dict[str, Any]:
        """The status.yaml mapping; raises InvalidDocument if the record breaks the schema."""
        document: dict[str, Any] = {"ptm": 1}
        for key in _KEYS[1:]:
            value = getattr(self, key)
            if key in _ENCRYPTION_KEYS and value in (None, ()):
                continue
            if key in ("outputs", "skipped"):
                value = [dict(entry) for entry in value]
            document[key] = list(value) if key == "encrypted_to" else value
        validate(document, "status", source=source)
        return document

    @classmethod
    def from_document(
        cls, document: Mapping[str, Any], *, source: str = "status.yaml"
    ) -> StatusRecord:
        """Validate a parsed status.yaml and build the record; InvalidDocument if it is bad."""
        validate(document, "status", source=source)
        check_name(document["task"], kind="task id", source=source, path="task")
        check_name(document["site"], kind="site name", source=source, path="site")
        values = {key: document[key] for key in _KEYS[1:] if key in document}
        for key in ("outputs", "skipped", "encrypted_to"):
            values[key] = tuple(values.get(key, ()))
        return cls(**values)


def load_status(path: Path, *, source: str | None = None) -> StatusRecord:
    """Read and validate a status.yaml file."""
    name = source if source is not None else str(path)
    return StatusRecord.from_document(load_yaml_file(path, source=name), source=name)
