"""The researcher's commands against real agents and real containers: submit, status, results,
cancel, all through the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ptm.main import main
from tests.agent_support import site_agent
from tests.fixtures_git import SigningKey, clone, write_allowed_signers

pytestmark = pytest.mark.docker


def ptm(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def submit(work: Path, task_id: str, script: str, key: SigningKey) -> None:
    assert (
        main(
            [
                "task",
                "new",
                task_id,
                "--image",
                "ptm-test/busybox:latest",
                "--site",
                "hospital-a",
                "--site",
                "hospital-b",
                "--command",
                script,
                "--registry",
                str(work),
            ]
        )
        == 0
    )
    assert (
        main(["task", "submit", task_id, "--sign-key", str(key.private), "--registry", str(work)])
        == 0
    )


def signed_sites(tmp_path: Path, key: SigningKey) -> dict[str, object]:
    signers = write_allowed_signers(tmp_path / "signers", key)
    return {
        "require_signed_tasks": True,
        "allowed_signers": str(signers),
        "trusted_submitters": [key.principal],
    }


def test_submit_status_results_with_real_agents(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    docker_client: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = clone(bare_registry, tmp_path / "work")
    submit(work, "loop", "sh -c 'echo 42 > /ptm/output/answer.txt'", alice)
    policy = signed_sites(tmp_path, alice)
    site_agent(tmp_path, "hospital-a", bare_registry, policy=policy).once()

    code, out = ptm(capsys, "status", "--registry", str(work))
    assert code == 0
    assert any(line.split()[:3] == ["loop", "hospital-a", "completed"] for line in out.splitlines())
    assert any(line.split()[:3] == ["loop", "hospital-b", "waiting"] for line in out.splitlines())

    out_dir = tmp_path / "collected"
    code, _ = ptm(
        capsys,
        "results",
        "loop",
        "--wait",
        "--timeout",
        "2",
        "--interval",
        "0.5",
        "--out",
        str(out_dir),
        "--registry",
        str(work),
    )
    assert code == 1  # hospital-b has not answered
    assert (out_dir / "hospital-a" / "output" / "answer.txt").read_text() == "42\n"

    site_agent(tmp_path, "hospital-b", bare_registry, policy=policy).once()
    code, out = ptm(
        capsys,
        "results",
        "loop",
        "--wait",
        "--timeout",
        "30",
        "--json",
        "--out",
        str(out_dir),
        "--registry",
        str(work),
    )
    assert code == 0
    assert (out_dir / "hospital-b" / "output" / "answer.txt").read_text() == "42\n"
    code, out = ptm(capsys, "status", "loop", "--json", "--registry", str(work))
    detail = json.loads(out)
    assert {s["site"]: s["state"] for s in detail["sites"]} == {
        "hospital-a": "completed",
        "hospital-b": "completed",
    }
    assert {s["status"]["submitted_by"] for s in detail["sites"]} == {"alice@uni.example"}


def test_ptm_cancel_stops_a_running_container(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    docker_client: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = clone(bare_registry, tmp_path / "work")
    submit(work, "endless", "sh -c 'sleep 300'", alice)
    agent = site_agent(tmp_path, "hospital-a", bare_registry, policy=signed_sites(tmp_path, alice))
    agent.cycle()
    deadline = time.monotonic() + 30
    while (record := agent.ledger.status_of("endless")) is None or record.state != "running":
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.2)
    code, _ = ptm(
        capsys,
        "cancel",
        "endless",
        "--reason",
        "wrong column",
        "--sign-key",
        str(alice.private),
        "--registry",
        str(work),
    )
    assert code == 0
    started = time.monotonic()
    agent.cycle()
    agent.drain()
    agent.publish()
    assert time.monotonic() - started < 60
    code, out = ptm(capsys, "status", "endless", "--json", "--registry", str(work))
    states = {s["site"]: s["state"] for s in json.loads(out)["sites"]}
    assert states["hospital-a"] == "cancelled"
