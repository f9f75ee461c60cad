"""The agent trusts signatures, not pushers: cancels and its own results branch."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ptm.agent import Agent
from ptm.cancellation import cancel_task
from tests.agent_support import Researcher, remote_status, site_agent, states_in_history
from tests.fixtures_git import SigningKey, git, write_allowed_signers

pytestmark = pytest.mark.docker


def signed_agent(tmp_path: Path, registry: Path, *keys: SigningKey, **policy: object) -> Agent:
    signers = write_allowed_signers(tmp_path / "allowed_signers", *keys)
    return site_agent(
        tmp_path,
        "hospital-a",
        registry,
        policy={
            "require_signed_tasks": True,
            "allowed_signers": str(signers),
            "trusted_submitters": [keys[0].principal],
            **policy,
        },
    )


def wait_running(agent: Agent, task_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = agent.ledger.status_of(task_id)
        if record is not None and record.state == "running":
            return
        time.sleep(0.2)
    raise AssertionError(f"{task_id} did not start")


def cancel_as(researcher: Researcher, task_id: str, key: SigningKey) -> None:
    git(researcher.work, "pull", "-q", "--rebase")
    cancel_task(researcher.work, task_id, reason="stop", branch="main", sign_key=key.private)


def test_a_cancel_signed_by_someone_else_is_ignored_and_recorded(
    bare_registry: Path, tmp_path: Path, alice: SigningKey, mallory: SigningKey, test_image: str
) -> None:
    alice_clone = Researcher(bare_registry, tmp_path / "alice", alice)
    mallory_clone = Researcher(bare_registry, tmp_path / "mallory", mallory)
    alice_clone.submit("long", "sleep 8; echo done > /ptm/output/done.txt")
    agent = signed_agent(tmp_path, bare_registry, alice, mallory)
    agent.cycle()
    wait_running(agent, "long")

    cancel_as(mallory_clone, "long", mallory)
    agent.cycle()
    agent.drain()
    agent.publish()

    status = remote_status(bare_registry, "long")
    assert status is not None and status["state"] == "completed", status
    trailers = git(bare_registry, "log", "--format=%B", "results/hospital-a")
    assert "Cancel-Refused:" in trailers and "mallory@evil.example" in trailers
    assert "cancelled" not in states_in_history(bare_registry, "long")


def test_a_cancel_signed_by_the_submitter_stops_the_task(
    bare_registry: Path, tmp_path: Path, alice: SigningKey, mallory: SigningKey, test_image: str
) -> None:
    alice_clone = Researcher(bare_registry, tmp_path / "alice", alice)
    alice_clone.submit("long", "sleep 100")
    agent = signed_agent(tmp_path, bare_registry, alice, mallory)
    agent.cycle()
    wait_running(agent, "long")
    cancel_as(alice_clone, "long", alice)
    agent.cycle()
    agent.drain()
    agent.publish()
    status = remote_status(bare_registry, "long")
    assert status is not None and status["state"] == "cancelled", status


def test_a_trusted_canceller_may_cancel_before_the_start(
    bare_registry: Path, tmp_path: Path, alice: SigningKey, mallory: SigningKey, test_image: str
) -> None:
    alice_clone = Researcher(bare_registry, tmp_path / "alice", alice)
    alice_clone.submit("never", "echo ran > /ptm/output/x")
    cancel_as(Researcher(bare_registry, tmp_path / "m", mallory), "never", mallory)
    agent = signed_agent(
        tmp_path, bare_registry, alice, mallory, trusted_cancellers=[mallory.principal]
    )
    agent.once()
    status = remote_status(bare_registry, "never")
    assert status is not None and status["state"] == "cancelled", status


def test_a_foreign_commit_on_the_results_branch_is_undone_and_reported(
    bare_registry: Path, tmp_path: Path, alice: SigningKey, test_image: str
) -> None:
    alice_clone = Researcher(bare_registry, tmp_path / "alice", alice)
    alice_clone.submit("first", "true")
    agent = signed_agent(tmp_path, bare_registry, alice)
    agent.once()
    # Someone with push access rewrites the site's record and plants a file.
    forger = tmp_path / "forger"
    git(tmp_path, "clone", "-q", "-b", "results/hospital-a", str(bare_registry), str(forger))
    status_file = forger / "results" / "first" / "hospital-a" / "status.yaml"
    status_file.write_text(status_file.read_text().replace("completed", "failed"))
    (forger / "results" / "first" / "hospital-a" / "planted.txt").write_text("x")
    git(forger, "commit", "-qam", "forged", "--no-verify")
    git(forger, "add", "-A")
    git(forger, "commit", "-qm", "planted")
    git(forger, "push", "-q", "origin", "HEAD:results/hospital-a")

    alice_clone.submit("second", "true")
    agent.once()

    assert remote_status(bare_registry, "second")["state"] == "completed"  # type: ignore[index]
    assert remote_status(bare_registry, "first")["state"] == "completed"  # type: ignore[index]
    tree = git(bare_registry, "ls-tree", "-r", "--name-only", "results/hospital-a")
    assert "planted.txt" not in tree
    warnings = "\n".join(agent.workdir.load_state().warnings)
    assert "was not made by this agent" in warnings
