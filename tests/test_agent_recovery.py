"""An agent killed with SIGKILL and restarted: nothing runs twice, nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agent_support import (
    Researcher,
    remote_file,
    remote_status,
    states_in_history,
    write_site_config,
)
from tests.fixtures_git import git

pytestmark = pytest.mark.docker


def _agent_process(config: Path, *action: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ptm", "agent", *action, "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )


def _wait_for_state(registry: Path, task: str, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = remote_status(registry, task)
        if status is not None and status["state"] == state:
            return
        time.sleep(0.3)
    raise AssertionError(f"{task} never reached {state}; last: {remote_status(registry, task)}")


def test_sigkill_mid_run_then_restart_runs_each_task_once(
    bare_registry: Path, tmp_path: Path, docker_client: object
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("first", "sleep 4; echo once >> /ptm/output/runs")
    researcher.submit("second", "echo once >> /ptm/output/runs")
    config = write_site_config(tmp_path, "hospital-a", bare_registry, limits={"max_parallel": 1})
    agent = _agent_process(config, "run")
    try:
        _wait_for_state(bare_registry, "first", "running")
        assert remote_status(bare_registry, "second")["state"] == "accepted"  # type: ignore[index]
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=30)

    done = subprocess.run(
        [sys.executable, "-m", "ptm", "agent", "once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "re-attaching" in done.stderr
    for task in ("first", "second"):
        status = remote_status(bare_registry, task)
        assert status is not None and status["state"] == "completed", status
        assert remote_file(bare_registry, task, "output/runs") == "once"
        assert states_in_history(bare_registry, task).count("completed") == 1
    assert states_in_history(bare_registry, "first").count("running") == 1


def test_running_task_whose_container_vanished_is_crashed_not_rerun(
    bare_registry: Path, tmp_path: Path, docker_client: object
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("doomed", "sleep 30")
    config = write_site_config(tmp_path, "hospital-a", bare_registry)
    agent = _agent_process(config, "run")
    try:
        _wait_for_state(bare_registry, "doomed", "running")
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=30)
    for container in docker_client.containers.list(  # type: ignore[attr-defined]
        all=True, filters={"label": "ptm.task=doomed"}
    ):
        container.remove(force=True)
    done = subprocess.run(
        [sys.executable, "-m", "ptm", "agent", "once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    status = remote_status(bare_registry, "doomed")
    assert status is not None and status["state"] == "crashed"
    assert "container is gone" in status["reason"]


def test_sigterm_hands_back_and_restart_finishes(
    bare_registry: Path, tmp_path: Path, docker_client: object
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("handed", "sleep 3; echo fine > /ptm/output/r")
    config = write_site_config(tmp_path, "hospital-a", bare_registry)
    agent = _agent_process(config, "run")
    _wait_for_state(bare_registry, "handed", "running")
    agent.send_signal(signal.SIGTERM)
    output, _ = agent.communicate(timeout=30)
    assert agent.returncode == 0, output
    assert "handed back" in output
    subprocess.run(
        [sys.executable, "-m", "ptm", "agent", "once", "--config", str(config)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert remote_file(bare_registry, "handed", "output/r") == "fine"
    assert git(bare_registry, "rev-parse", "--verify", "results/hospital-a")


def test_a_local_registry_is_watched_so_tasks_start_before_the_poll(
    bare_registry: Path, tmp_path: Path, docker_client: object
) -> None:
    config = write_site_config(tmp_path, "hospital-a", bare_registry, poll_interval=600)
    agent = _agent_process(config, "run")
    try:
        time.sleep(3)  # the first cycle has run; the next poll is ten minutes away
        Researcher(bare_registry, tmp_path / "researcher").submit("prompt", "echo seen")
        _wait_for_state(bare_registry, "prompt", "completed", timeout=60)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
