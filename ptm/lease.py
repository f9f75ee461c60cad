"""One site name, one runner: the lease an agent holds on its results branch.

Every commit an agent makes on ``results/<site>`` carries an ``Agent: <id>`` trailer (the id is
made once per work directory). An agent that finds the registry's branch tip written by another
agent less than ``LEASE_TTL_S`` ago (by that commit's own date) refuses to act for the site. An
idle agent renews its lease with an empty commit every ``LEASE_RENEW_S``; one that stops cleanly
releases it (``Lease: released``), so that a replacement can start at once.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ptm.errors import PtmError
from ptm.gitrepo import GitRepo
from ptm.treecheck import object_sizes

LEASE_TTL_S = 30 * 60
LEASE_RENEW_S = 10 * 60
AGENT_TRAILER = "Agent"
LEASE_TRAILER = "Lease"
RELEASED = "released"
ID_FILE = "agent-id"
# A commit ptm writes is a few hundred bytes (a kilobyte or two signed); anyone who can push to
# the branch may write one of any size, which is judged by its size and never read.
MAX_TIP_BYTES = 64 * 1024


class LeaseHeld(PtmError):
    """Another agent runs this site (from another work directory, maybe another host)."""


@dataclass(frozen=True)
class TipLease:
    agent: str | None
    released: bool
    written_at: int  # the commit's committer time, seconds since the epoch
    commit: str


def agent_identity(workdir: Path) -> str:
    """``<random id>@<host>``, made once per work directory and kept in it."""
    path = workdir / ID_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    identity = f"{uuid.uuid4().hex[:16]}@{socket.gethostname()}"
    path.write_text(identity + "\n", encoding="utf-8")
    return identity


def trailers(message: str) -> dict[str, str]:
    """``Key: value`` lines of a commit message (the last value of a key wins)."""
    found = {}
    for line in message.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key and " " not in key:
            found[key] = value.strip()
    return found


def read_tip(repo: GitRepo, commit: str) -> TipLease:
    """The lease a branch's tip records; none from a commit over MAX_TIP_BYTES (not read, so
    a crafted commit can neither exhaust memory nor claim the site)."""
    (info,) = object_sizes(repo, [commit])
    if info is None or info[0] != "commit" or info[1] > MAX_TIP_BYTES:
        return TipLease(None, False, 0, commit)
    out = repo.run("log", "-1", "--format=%ct%x00%B", commit)
    stamp, _, message = out.partition("\0")
    found = trailers(message)
    return TipLease(
        found.get(AGENT_TRAILER), found.get(LEASE_TRAILER) == RELEASED, int(stamp or 0), commit
    )


def held_by_other(tip: TipLease, me: str, *, now: float | None = None) -> str | None:
    """Why the tip shows another live agent, or None when this agent may act."""
    if tip.agent is None or tip.agent == me or tip.released:
        return None
    age = (now if now is not None else time.time()) - tip.written_at
    if age >= LEASE_TTL_S:
        return None
    return (
        f"another agent ({tip.agent}) runs this site: it wrote commit {tip.commit[:12]} "
        f"{max(0, int(age))}s ago. Two agents with one site name would both run its tasks. Stop "
        f"the other one (its lease is released when it stops), or wait until its lease of "
        f"{LEASE_TTL_S // 60} minutes has run out"
    )
