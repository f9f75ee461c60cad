"""The same contract on every runtime: the agent's end-to-end cases a runtime could get wrong
(cancelled, a killed agent resumed without running anything twice, hostile outputs collected
safely) on Docker, Podman and Slurm alike. Completed, failed and timed out are in
test_agent.py (Docker) and test_runtime_engine.py / test_runtime_slurm.py (the others)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ptm.agent import Agent
from ptm.runtimes import open_site_runtime
from ptm.siteconfig import load_site_config
from tests.agent_support import (
    Researcher,
    remote_file,
    remote_status,
    states_in_history,
    write_site_config,
)

pytestmark = pytest.mark.docker


@pytest.fixture(params=["docker", "podman", "slurm"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The site config's ``runtime`` section for each engine, its peers running."""
    request.getfixturevalue("docker_client")  # the Docker tests' guard and engine
    if request.param == "docker":
        return {}
    podman = request.getfixturevalue("podman_engine")
    if request.param == "podman":
        return {"engine": "podman", "podman": {"socket": podman.socket}}
    cluster = request.getfixturevalue("slurm_cluster")
    request.getfixturevalue("slurm_env")
    slurm = {"shared_dir": str(tmp_path), "node_engine_options": list(cluster.podman_options())}
    return {"engine": "slurm", "slurm": slurm}


def site_config(tmp_path: Path, registry: Path, engine: dict[str, Any], **extra: Any) -> Path:
    return write_site_config(tmp_path, "hospital-a", registry, runtime=engine, **extra)


def wait_for_state(registry: Path, task: str, state: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = remote_status(registry, task)
        if status is not None and status["state"] == state:
            return
        time.sleep(0.3)
    raise AssertionError(f"{task} never reached {state}; last: {remote_status(registry, task)}")


def state_of(agent: Agent, task: str) -> str | None:
    status = agent.ledger.status_of(task)
    return status.state if status is not None else None


def test_cancel_stops_the_running_task(
    bare_registry: Path, tmp_path: Path, engine: dict[str, Any]
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("long", "echo working; sleep 120")
    config = load_site_config(site_config(tmp_path, bare_registry, engine))
    agent = Agent(config, open_site_runtime(config.runtime))
    agent.start()
    agent.cycle()
    deadline = time.monotonic() + 90
    while state_of(agent, "long") != "running":
        assert time.monotonic() < deadline, "the task never ran"
        time.sleep(0.2)
    researcher.commit_file("tasks/long/cancel.yaml", "ptm: 1\nreason: wrong column\n", "cancel")
    began = time.monotonic()
    agent.cycle()
    agent.drain()
    agent.publish()
    assert time.monotonic() - began < 60
    status = remote_status(bare_registry, "long")
    assert status is not None and status["state"] == "cancelled", status


def test_killed_agent_resumes_and_runs_each_task_once(
    bare_registry: Path, tmp_path: Path, engine: dict[str, Any]
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("first", "sleep 6; echo once >> /ptm/output/runs")
    researcher.submit("second", "echo once >> /ptm/output/runs")
    config = site_config(tmp_path, bare_registry, engine, limits={"max_parallel": 1})
    command = [sys.executable, "-m", "ptm", "agent"]
    agent = subprocess.Popen(
        [*command, "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    try:
        wait_for_state(bare_registry, "first", "running")
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=30)
    done = subprocess.run(
        [*command, "once", "--config", str(config)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "re-attaching" in done.stderr
    for task in ("first", "second"):
        status = remote_status(bare_registry, task)
        assert status is not None and status["state"] == "completed", status
        assert remote_file(bare_registry, task, "output/runs") == "once"
    assert states_in_history(bare_registry, "first").count("running") == 1


def test_hostile_outputs_are_collected_safely(
    bare_registry: Path, tmp_path: Path, engine: dict[str, Any]
) -> None:
    script = (
        "echo fine > /ptm/output/result.txt; ln -s /etc/passwd /ptm/output/passwd;"
        " mkfifo /ptm/output/pipe"
    )
    Researcher(bare_registry, tmp_path / "researcher").submit("outputs", script)
    config = site_config(tmp_path, bare_registry, engine)
    assert (
        subprocess.run(
            [sys.executable, "-m", "ptm", "agent", "once", "--config", str(config)],
            capture_output=True,
            timeout=300,
        ).returncode
        == 0
    )
    status = remote_status(bare_registry, "outputs")
    assert status is not None and status["state"] == "completed", status
    assert [entry["path"] for entry in status["outputs"]] == ["output/result.txt"]
    assert remote_file(bare_registry, "outputs", "output/result.txt") == "fine"
    skipped = {entry["path"]: entry["reason"] for entry in status["skipped"]}
    assert set(skipped) == {"output/passwd", "output/pipe"}
    assert skipped["output/passwd"] == "symbolic link, not followed"
