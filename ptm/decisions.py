"""A site admin's decisions (approve, deny, release) handed to the agent through its work
directory: the command line writes one file per task, the agent records it on the results
branch (signed with the site key) at its next cycle, then removes the file."""

from __future__ import annotations

import getpass
import json
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ptm.errors import PtmError
from ptm.names import check_name
from ptm.status import utc_now_text
from ptm.workdir import WorkDir, write_atomically

Verdict = Literal["approve", "deny", "release"]
VERDICTS: tuple[Verdict, ...] = ("approve", "deny", "release")


@dataclass(frozen=True)
class AdminDecision:
    task_id: str
    verdict: Verdict
    decided_by: str
    decided_at: str
    reason: str | None = None


def decisions_dir(workdir: WorkDir) -> Path:
    return workdir.root / "decisions"


def held_dir(workdir: WorkDir, task_id: str) -> Path:
    """Where finished results wait for the admin's release (``release: manual``)."""
    return workdir.root / "held" / task_id


def admin_identity() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def drop_decision(workdir: WorkDir, decision: AdminDecision) -> Path:
    check_name(decision.task_id, kind="task id", source="command line")
    path = decisions_dir(workdir) / f"{decision.task_id}.json"
    write_atomically(path, json.dumps(asdict(decision), indent=2) + "\n")
    return path


def make_decision(
    task_id: str, verdict: Verdict, *, reason: str | None, decided_by: str | None
) -> AdminDecision:
    if verdict == "deny" and not reason:
        raise PtmError("a denial needs --reason: the researcher learns it from the status")
    return AdminDecision(task_id, verdict, decided_by or admin_identity(), utc_now_text(), reason)


def pending_decisions(workdir: WorkDir) -> list[AdminDecision]:
    folder = decisions_dir(workdir)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            decision = AdminDecision(**document)
        except (ValueError, TypeError) as exc:
            path.rename(path.with_suffix(".unreadable"))
            raise PtmError(f"{path}: unreadable admin decision ({exc}); set aside") from exc
        if decision.verdict in VERDICTS and path.stem == decision.task_id:
            found.append(decision)
    return found


def forget_decision(workdir: WorkDir, task_id: str) -> None:
    (decisions_dir(workdir) / f"{task_id}.json").unlink(missing_ok=True)
