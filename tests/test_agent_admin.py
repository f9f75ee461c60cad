"""Manual approval and manual release, decided through the command line, recorded by the agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptm.decisions import held_dir
from ptm.main import main
from tests.agent_support import (
    Researcher,
    remote_file,
    remote_status,
    site_agent,
    states_in_history,
    write_site_config,
)
from tests.fixtures_git import git

pytestmark = pytest.mark.docker


def admin(*args: str) -> int:
    return main(["agent", *args])


def test_manual_approval_waits_then_runs_after_approve(
    bare_registry: Path, tmp_path: Path, docker_client: object, capsys: pytest.CaptureFixture[str]
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "r")
    researcher.submit("needs-ok", "echo approved > /ptm/output/r", config={"column": "age"})
    agent = site_agent(tmp_path, "hospital-a", bare_registry, policy={"approval": "manual"})
    config = str(tmp_path / "hospital-a.yaml")
    agent.once()
    assert remote_status(bare_registry, "needs-ok")["state"] == "awaiting_approval"  # type: ignore[index]

    capsys.readouterr()
    assert admin("pending", "--config", config) == 0
    shown = capsys.readouterr().out
    assert "needs-ok: awaiting_approval" in shown
    assert "ptm-test/busybox:latest" in shown and "column: age" in shown

    assert admin("approve", "needs-ok", "--config", config, "--as", "dr.admin") == 0
    agent.once()
    status = remote_status(bare_registry, "needs-ok")
    assert status is not None and status["state"] == "completed"
    assert status["decided_by"] == "dr.admin"
    assert remote_file(bare_registry, "needs-ok", "output/r") == "approved"
    assert states_in_history(bare_registry, "needs-ok")[:2] == ["awaiting_approval", "accepted"]


def test_deny_records_the_reason_and_never_runs(
    bare_registry: Path, tmp_path: Path, docker_client: object, capsys: pytest.CaptureFixture[str]
) -> None:
    Researcher(bare_registry, tmp_path / "r").submit("nope", "echo ran > /ptm/output/r")
    agent = site_agent(tmp_path, "hospital-a", bare_registry, policy={"approval": "manual"})
    config = str(tmp_path / "hospital-a.yaml")
    agent.once()
    capsys.readouterr()
    assert admin("deny", "nope", "--reason", "no ethics approval", "--config", config) == 0
    agent.once()
    status = remote_status(bare_registry, "nope")
    assert status is not None and status["state"] == "denied"
    assert "no ethics approval" in status["reason"]
    assert "running" not in states_in_history(bare_registry, "nope")
    assert admin("approve", "nope", "--config", config) == 1
    assert "it is denied" in capsys.readouterr().err


def test_deny_without_reason_is_a_usage_error(
    bare_registry: Path, tmp_path: Path, docker_client: object
) -> None:
    config = write_site_config(tmp_path, "hospital-a", bare_registry)
    with pytest.raises(SystemExit) as exited:
        admin("deny", "x", "--config", str(config))
    assert exited.value.code == 2


def test_manual_release_holds_outputs_until_released(
    bare_registry: Path, tmp_path: Path, docker_client: object, capsys: pytest.CaptureFixture[str]
) -> None:
    Researcher(bare_registry, tmp_path / "r").submit("held", "echo 12345 > /ptm/output/n.txt")
    agent = site_agent(tmp_path, "hospital-a", bare_registry, policy={"release": "manual"})
    config = str(tmp_path / "hospital-a.yaml")
    agent.once()
    status = remote_status(bare_registry, "held")
    assert status is not None and status["state"] == "reviewing"
    listed = git(bare_registry, "ls-tree", "-r", "--name-only", "results/hospital-a").split()
    assert "results/held/hospital-a/output/n.txt" not in listed
    assert "results/held/hospital-a/log.txt" not in listed

    capsys.readouterr()
    assert admin("review", "held", "--config", config) == 0
    review = capsys.readouterr().out
    assert "output/n.txt" in review and " 6" in review

    assert admin("release", "held", "--config", config) == 0
    agent.once()
    status = remote_status(bare_registry, "held")
    assert status is not None and status["state"] == "completed"
    assert remote_file(bare_registry, "held", "output/n.txt") == "12345"


def test_withheld_results_never_leave(
    bare_registry: Path, tmp_path: Path, docker_client: object
) -> None:
    Researcher(bare_registry, tmp_path / "r").submit("secret", "expr 1234 \\* 2 > /ptm/output/rows")
    agent = site_agent(tmp_path, "hospital-a", bare_registry, policy={"release": "manual"})
    config = str(tmp_path / "hospital-a.yaml")
    agent.once()
    held = held_dir(agent.workdir, "secret")
    assert (held / "output" / "rows").read_text() == "2468\n"
    assert admin("deny", "secret", "--reason", "contains rows", "--config", config) == 0
    agent.once()
    status = remote_status(bare_registry, "secret")
    assert status is not None and status["state"] == "denied"
    published = git(bare_registry, "log", "-p", "results/hospital-a")
    assert "contains rows" in published
    assert "2468" not in published
    assert not held.exists()


def branch_history_text(registry: Path, task_id: str) -> str:
    """Every version of the task's folder on the results branch: what anyone could ever read."""
    out = []
    for sha in git(registry, "rev-list", "results/hospital-a").split():
        listing = git(registry, "ls-tree", "-r", "--name-only", sha, f"results/{task_id}/")
        out.append(listing)
        for path in listing.splitlines():
            out.append(git(registry, "show", f"{sha}:{path}"))
    out.append(git(registry, "log", "--format=%B", "results/hospital-a"))
    return "\n".join(out)


def test_a_held_result_leaks_nothing_and_a_denied_one_never_does(
    bare_registry: Path, tmp_path: Path, docker_client: object
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "r")
    researcher.submit("secret", "echo 4711 > /ptm/output/count.txt; echo leaked-log-line")
    researcher.submit("kept", "echo 42 > /ptm/output/answer.txt")
    agent = site_agent(tmp_path, "hospital-a", bare_registry, policy={"release": "manual"})
    config = str(tmp_path / "hospital-a.yaml")
    agent.once()
    for task_id in ("secret", "kept"):
        status = remote_status(bare_registry, task_id)
        assert status is not None and status["state"] == "reviewing"
        assert status["outputs"] == [] and status["exit_code"] is None
        assert status["finished_at"] is None and "completed" not in status["reason"]
    assert admin("deny", "secret", "--reason", "too small a count", "--config", config) == 0
    assert admin("release", "kept", "--config", config) == 0
    agent.once()
    history = branch_history_text(bare_registry, "secret")
    assert "count.txt" not in history and "4711" not in history and "leaked-log-line" not in history
    import hashlib

    assert hashlib.sha256(b"4711\n").hexdigest() not in history
    assert remote_status(bare_registry, "secret")["state"] == "denied"  # type: ignore[index]
    released = remote_status(bare_registry, "kept")
    assert released is not None and released["state"] == "completed"
    assert remote_file(bare_registry, "kept", "output/answer.txt") == "42"
    assert [o["path"] for o in released["outputs"]] == ["output/answer.txt"]
