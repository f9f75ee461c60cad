"""ptm agent resume: out of a tamper halt once the admin has looked, with a record left for
the agent to commit on its results branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptm.main import main
from ptm.resume import pending_resumes
from ptm.workdir import WorkDir
from tests.agent_support import Researcher, remote_status, site_agent, states_in_history
from tests.fixtures_git import git


@pytest.fixture
def researcher(bare_registry: Path, tmp_path: Path) -> Researcher:
    return Researcher(bare_registry, tmp_path / "researcher")


def halt_by_rewrite(bare_registry: Path, tmp_path: Path, researcher: Researcher) -> str:
    """A task runs, then the tasks branch is rewritten without it and with another: halted."""
    researcher.submit("before", "true")
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.once()
    processed = agent.workdir.load_state().processed
    assert processed is not None
    git(researcher.work, "reset", "-q", "--hard", "HEAD~1")
    task = researcher.work / "tasks" / "after-rewrite" / "task.yaml"
    task.parent.mkdir(parents=True)
    task.write_text(
        "ptm: 1\nimage: ptm-test/busybox:latest\nsites: [hospital-a]\n"
        "command: [sh, -c, 'echo hello > /ptm/output/hello']\n"
    )
    git(researcher.work, "add", "tasks")
    git(researcher.work, "commit", "-q", "-m", "history rewritten under the sites' feet")
    git(researcher.work, "push", "-q", "--force", "origin", "HEAD:main")
    agent.once()
    assert agent.workdir.load_state().halted is not None
    return processed


def test_resume_clears_the_halt_and_the_agent_goes_on_from_the_merge_base(
    bare_registry: Path,
    tmp_path: Path,
    researcher: Researcher,
    docker_client: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    processed = halt_by_rewrite(bare_registry, tmp_path, researcher)
    base = git(bare_registry, "merge-base", processed, "main")
    config = tmp_path / "hospital-a.yaml"
    capsys.readouterr()
    assert main(["agent", "status", "--config", str(config)]) == 0
    assert "ptm agent resume --config" in capsys.readouterr().out
    reason = "looked: the researcher re-submitted after removing 'before'"
    code = main(
        ["agent", "resume", "--config", str(config), "--reason", reason, "--as", "it@hospital-a"]
    )
    assert code == 0
    assert "goes on from tasks commit " + base[:12] in capsys.readouterr().out
    workdir = WorkDir(tmp_path / "work-hospital-a")
    state = workdir.load_state()
    assert state.halted is None and state.processed == base
    ((_, record),) = pending_resumes(workdir)
    assert (record.resumed_by, record.reason) == ("it@hospital-a", reason)
    assert record.processed_before == processed and record.processed_after == base
    assert record.tasks_head == git(bare_registry, "rev-parse", "main")
    assert "rewritten" in record.halt

    site_agent(tmp_path, "hospital-a", bare_registry).once()
    after = remote_status(bare_registry, "after-rewrite")
    assert after is not None and after["state"] == "completed"
    assert states_in_history(bare_registry, "before").count("completed") == 1  # not run again
    assert pending_resumes(workdir) == []  # committed by the agent, then removed
    recorded = git(
        bare_registry, "log", "-1", "--format=%B", "--grep=resumed after", "results/hospital-a"
    )
    assert "Resumed-By: it@hospital-a" in recorded and f"Processed-After: {base}" in recorded


def test_resume_without_a_halt_or_with_the_agent_running_changes_nothing(
    bare_registry: Path,
    tmp_path: Path,
    researcher: Researcher,
    docker_client: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    researcher.submit("fine", "true")
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.once()
    config = str(tmp_path / "hospital-a.yaml")
    assert main(["agent", "resume", "--config", config, "--reason", "x"]) == 1
    assert "not halted" in capsys.readouterr().err
    halted = agent.workdir.load_state().with_halt("the tasks branch was rewritten (test)")
    agent.workdir.save_state(halted)
    with agent.workdir.locked():
        assert main(["agent", "resume", "--config", config, "--reason", "x"]) == 1
    assert "another ptm agent" in capsys.readouterr().err
    assert agent.workdir.load_state() == halted
    assert main(["agent", "resume", "--config", config, "--reason", "ok", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["processed_after"] == git(bare_registry, "rev-parse", "main")
