"""What a site admin reads in ``ptm agent pending`` and ``ptm agent review``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptm.main import main
from tests.agent_support import Researcher, site_agent


def admin(*args: str) -> int:
    return main(["agent", *args])


@pytest.mark.docker
def test_pending_shows_the_tasks_config_and_decisions_already_queued(
    bare_registry: Path, tmp_path: Path, docker_client: object, capsys: pytest.CaptureFixture[str]
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "r")
    researcher.submit("needs-ok", "true", config={"column": "age", "cohort": {"from": 2020}})
    agent = site_agent(tmp_path, "hospital-a", bare_registry, policy={"approval": "manual"})
    config = str(tmp_path / "hospital-a.yaml")
    agent.once()
    capsys.readouterr()
    assert admin("pending", "--config", config) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "needs-ok: awaiting_approval (waits for approval to run)"
    assert "  config       column: age\n               cohort:\n" in out
    assert "ptm: 1" not in out and "command" not in out  # the config, not the whole task.yaml
    assert "queued" not in out
    assert admin("approve", "needs-ok", "--as", "dr-admin", "--config", config) == 0
    capsys.readouterr()
    assert admin("pending", "--config", config) == 0
    queued = next(line for line in capsys.readouterr().out.splitlines() if "queued" in line)
    assert queued.startswith("  queued       approve by dr-admin at ")
    assert queued.endswith("(the agent records it at its next cycle)")
    assert admin("pending", "--json", "--config", config) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert item["config"] == {"column": "age", "cohort": {"from": 2020}}
    assert item["queued_decision"]["verdict"] == "approve"
    assert item["queued_decision"]["decided_by"] == "dr-admin"


@pytest.mark.docker
def test_review_speaks_of_output_files(
    bare_registry: Path, tmp_path: Path, docker_client: object, capsys: pytest.CaptureFixture[str]
) -> None:
    Researcher(bare_registry, tmp_path / "r").submit("held", "echo 12345 > /ptm/output/n.txt")
    agent = site_agent(tmp_path, "hospital-a", bare_registry, policy={"release": "manual"})
    agent.once()
    capsys.readouterr()
    assert admin("review", "held", "--config", str(tmp_path / "hospital-a.yaml")) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ["OUTPUT", "FILE", "BYTES"]
    assert "1 output files (6 bytes) and the log (" in out
