"""kill -9 in the middle of committing a record (while its commit is being signed), planted
lock files, a signing key moved away and back: nothing is lost, nothing runs twice."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agent_support import (
    Researcher,
    remote_status,
    site_agent,
    states_in_history,
    write_site_config,
)
from tests.fixtures_git import make_signing_key

pytestmark = pytest.mark.docker


SIGN_SHIM = """#!/bin/sh
# A real ssh-keygen, slowed down when it signs (a result commit) so that a test can kill there:
# the record's objects are written, the branch not yet moved.
if [ "$1" = "-Y" ] && [ "$2" = "sign" ]; then touch "$PTM_TEST_MARKS/sign.$$"; sleep 1; fi
exec "$PTM_TEST_REAL_SSH_KEYGEN" "$@"
"""


def slow_signing(folder: Path) -> dict[str, str]:
    """Environment for an agent whose ssh-keygen pauses at each signature (a real one below)."""
    bin_dir, marks = folder / "bin", folder / "marks"
    bin_dir.mkdir(parents=True)
    marks.mkdir()
    shim = bin_dir / "ssh-keygen"
    shim.write_text(SIGN_SHIM)
    shim.chmod(0o755)
    real = shutil.which("ssh-keygen")
    assert real is not None
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PTM_TEST_MARKS": str(marks),
        "PTM_TEST_REAL_SSH_KEYGEN": real,
    }


def kill_during(agent: subprocess.Popen[bytes], marks: Path, step: str, timeout: float) -> bool:
    """SIGKILL the agent, and the git it is running, while that git is at ``step``."""
    seen = set(marks.iterdir())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and agent.poll() is None:
        for mark in set(marks.iterdir()) - seen:
            if mark.name.startswith(f"{step}."):
                os.kill(agent.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(mark.name.split(".")[1]), signal.SIGKILL)
                agent.wait()
                return True
        time.sleep(0.02)
    return False


def start_agent(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ptm", "agent", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


def test_killed_while_committing_records_nothing_is_lost_or_run_twice(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    for number in range(4):
        researcher.submit(f"t{number}", f"sleep 1; echo {number} > /ptm/output/n.txt")
    key = make_signing_key(tmp_path / "site-keys", "ptm-agent@hospital-a")
    config = write_site_config(tmp_path, "hospital-a", bare_registry, signing_key=str(key.private))
    env = slow_signing(tmp_path / "slow")
    # A record's objects are written by ptm itself (ptm.journal_objects), then its commit is
    # signed, then the branch moved: a kill while it signs leaves objects and no record.
    steps = ("sign",) * 6
    for step in steps:
        agent = start_agent(config, env)
        killed = kill_during(agent, tmp_path / "slow" / "marks", step, timeout=60)
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        assert killed, f"the agent never reached {step}"
    agent = start_agent(config)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [remote_status(bare_registry, f"t{n}") for n in range(4)]
            if all(s is not None and s["state"] == "completed" for s in states):
                break
            time.sleep(0.5)
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    for number in range(4):
        status = remote_status(bare_registry, f"t{number}")
        assert status is not None and status["state"] == "completed", (number, status)
        assert states_in_history(bare_registry, f"t{number}").count("running") <= 1


def test_planted_lock_files_are_cleared_at_start(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("first", "true")
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.once()
    root = agent.workdir.root
    locks = [
        root / "ledger.git" / "ptm-index.lock",
        root / "ledger.git" / "refs" / "heads" / "results" / "hospital-a.lock",
        root / "registry" / ".git" / "index.lock",
    ]
    for lock in locks:
        lock.write_text("")
    researcher.submit("second", "true")
    site_agent(tmp_path, "hospital-a", bare_registry).once()
    assert remote_status(bare_registry, "second")["state"] == "completed"  # type: ignore[index]
    assert not any(lock.exists() for lock in locks)


def test_a_lock_is_kept_while_a_git_process_works_in_the_journal(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    Researcher(bare_registry, tmp_path / "researcher").submit("first", "true")
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.once()
    journal = agent.workdir.root / "ledger.git"
    lock = journal / "refs" / "heads" / "results" / "hospital-a.lock"
    lock.write_text("")
    # A git still at work in the journal (as git runs: from the repository's own folder).
    busy = subprocess.Popen(
        ["git", "cat-file", "--batch"], cwd=journal, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        agent.ledger.ensure()
        assert lock.exists()  # not removed under a live git
    finally:
        busy.communicate(timeout=10)
    agent.ledger.ensure()
    assert not lock.exists()


def test_a_missing_signing_key_fails_the_cycle_and_loses_nothing(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    key = make_signing_key(tmp_path / "site-keys", "ptm-agent@hospital-a")
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("signed-result", "true")
    agent = site_agent(tmp_path, "hospital-a", bare_registry, signing_key=str(key.private))
    moved = key.private.with_name("away")
    key.private.rename(moved)
    with pytest.raises(Exception, match="signing key"):
        agent.once()
    assert remote_status(bare_registry, "signed-result") is None
    moved.rename(key.private)
    agent.once()
    status = remote_status(bare_registry, "signed-result")
    assert status is not None and status["state"] == "completed", status
    assert states_in_history(bare_registry, "signed-result").count("accepted") == 1
