"""Out of a tamper halt: ``ptm agent resume`` after an admin has looked at a rewritten tasks
branch.

The agent halts when the registry's tasks branch no longer contains the last commit it
processed. Resuming clears the halt in the work directory's state and sets the last processed
commit to where the old and the new history meet (their merge base), so the agent looks again
at every task the rewrite brought, while the tasks it already acted on stay protected by its
results branch (acted on once; a changed one is logged and ignored). With no common history,
the new head itself is taken, and tasks older than it are not looked at.

The decision is left for the agent as a file in ``<workdir>/resumed/`` (``ResumeRecord``); the
agent commits it, signed with the site key, on ``results/<site>`` at its next cycle and then
removes the file, as it does with approvals (ptm/decisions.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ptm.decisions import admin_identity
from ptm.errors import PtmError
from ptm.gitrepo import GitRepo
from ptm.status import utc_now_text
from ptm.sync import TasksMirror
from ptm.workdir import WorkDir, write_atomically


@dataclass(frozen=True)
class ResumeRecord:
    """What the admin decided, for the results branch: who, when, why, and from where on."""

    resumed_by: str
    resumed_at: str
    reason: str
    halt: str  # the halt's own message, as the agent logged it
    processed_before: str | None
    processed_after: str
    tasks_head: str

    def file_name(self) -> str:
        return f"{self.resumed_at.replace(':', '')}.json"


def resumed_dir(workdir: WorkDir) -> Path:
    return workdir.root / "resumed"


def pending_resumes(workdir: WorkDir) -> list[tuple[Path, ResumeRecord]]:
    """Records not yet committed by the agent, oldest first (for the agent's next cycle)."""
    folder = resumed_dir(workdir)
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append((path, ResumeRecord(**json.loads(path.read_text(encoding="utf-8")))))
        except (ValueError, TypeError) as exc:
            path.rename(path.with_suffix(".unreadable"))
            raise PtmError(f"{path}: unreadable resume record ({exc}); set aside") from exc
    return found


def resume_point(mirror: TasksMirror, processed: str | None, head: str) -> str:
    """Where the old and the new history meet; the new head when they share nothing."""
    if processed is None:
        return head
    repo: GitRepo = mirror.repo
    if repo.rev_parse(processed) is None:
        return head
    base = (
        repo.run("merge-base", processed, head)
        if repo.succeeds("merge-base", processed, head)
        else ""
    )
    return base or head


def resume_after_halt(
    workdir: WorkDir, mirror: TasksMirror, *, reason: str, resumed_by: str | None, at: str | None
) -> ResumeRecord:
    """Clear the halt (the caller holds the work directory's lock) and leave the record."""
    if not reason.strip():
        raise PtmError("a resume needs --reason: it is recorded on the results branch")
    state = workdir.load_state()
    if state.halted is None:
        raise PtmError(f"{workdir.root}: the agent is not halted; nothing to resume")
    head = mirror.fetch()
    point = (
        mirror.repo.rev_parse(at) if at is not None else resume_point(mirror, state.processed, head)
    )
    if point is None or not mirror.repo.is_ancestor(point, head):
        raise PtmError(f"--at {at!r}: not a commit on the tasks branch {mirror.branch!r}")
    record = ResumeRecord(
        resumed_by=resumed_by or admin_identity(),
        resumed_at=utc_now_text(),
        reason=reason.strip(),
        halt=state.halted,
        processed_before=state.processed,
        processed_after=point,
        tasks_head=head,
    )
    write_atomically(
        resumed_dir(workdir) / record.file_name(), json.dumps(asdict(record), indent=2) + "\n"
    )
    workdir.save_state(state.with_halt(None).with_processed(point))
    return record
