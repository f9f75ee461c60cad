"""What one record on a results branch changes: its files and its commit message (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ptm.lease import AGENT_TRAILER
from ptm.result_layout import (
    LOG_FILE,
    OUTPUT_DIR,
    SEALED_FILE,
    STATUS_FILE,
    own_files,
    result_path,
)
from ptm.schema import dump_yaml
from ptm.status import StatusRecord


@dataclass(frozen=True)
class RecordChange:
    """One record's files and commit message, before anything is written."""

    task: str
    status_path: str
    files: Mapping[str, bytes]  # small ones, in memory: the status and the log
    paths: Mapping[str, Path]  # files on disk, streamed: collected outputs, a sealed result
    replace: str | None  # the output folder, when it is written anew (or withdrawn)
    message: str


def record_change(
    status: StatusRecord,
    site: str,
    identity: str,
    *,
    log: bytes | None = None,
    outputs: Path | None = None,
    message: str | None = None,
    remove_outputs: bool = False,
    note: str | None = None,
    sealed: Path | None = None,
) -> RecordChange:
    """The change that records ``status`` (with the log, outputs or sealed result given);
    the message's trailers (Task, Site, State, Reason, the agent) are what ``ptm audit``
    reads."""
    folder = result_path(status.task, site)
    status_path = f"{folder}/{STATUS_FILE}"
    files: dict[str, bytes] = {status_path: dump_yaml(status.to_document()).encode()}
    if log is not None:
        files[f"{folder}/{LOG_FILE}"] = log
    paths: dict[str, Path] = {}
    if outputs is not None:
        paths = {f"{folder}/{OUTPUT_DIR}/{rel}": p for rel, p in own_files(outputs)}
    if sealed is not None:
        paths[f"{folder}/{SEALED_FILE}"] = sealed
    replace = f"{folder}/{OUTPUT_DIR}" if outputs is not None or remove_outputs else None
    subject = message or f"{status.task}: {status.state} at {site}"
    body = f"\n\nTask: {status.task}\nSite: {site}\nState: {status.state}"
    if status.reason:
        body += f"\nReason: {' '.join(status.reason.split())[:300]}"
    if note:
        body += f"\n{note}"
    body += f"\n{AGENT_TRAILER}: {identity}"
    return RecordChange(status.task, status_path, files, paths, replace, subject + body)
