"""Every git call has a deadline: a registry that accepts the connection and never answers (a real
TCP listener on loopback) fails the agent's cycle with a clear message, the watch loop backs off
and tries again, and SIGTERM ends ``ptm agent run`` promptly while git hangs."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ptm.agent import Agent
from ptm.errors import RegistryError
from ptm.gitrepo import GitLimits, GitRepo, admin_ssh_command, deadline_environment
from ptm.runtimes.docker import DockerRuntime
from ptm.siteconfig import load_site_config
from ptm.watch import run_until_stopped
from tests.agent_support import write_site_config


class SilentRegistry:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        self._server.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def silent() -> Iterator[SilentRegistry]:
    registry = SilentRegistry()
    yield registry
    registry.close()


def ssh_url(silent: SilentRegistry) -> str:
    return f"ssh://git@127.0.0.1:{silent.port}/registry.git"


def http_url(silent: SilentRegistry) -> str:
    return f"http://127.0.0.1:{silent.port}/registry.git"


def site_config(tmp_path: Path, url: str, **overrides: object) -> Path:
    path = write_site_config(tmp_path, "hospital-a", tmp_path / "unused", **overrides)
    document = yaml.safe_load(path.read_text())
    document["registry"]["url"] = url
    path.write_text(yaml.safe_dump(document))
    return path


def agent_for(tmp_path: Path, url: str, **overrides: object) -> Agent:
    return Agent(load_site_config(site_config(tmp_path, url, **overrides)), DockerRuntime(None))


class FailedCycles(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "decision", None) == "cycle-failed":
            self.messages.append(record.getMessage())


def timed_failure(agent: Agent) -> tuple[float, str]:
    started = time.monotonic()
    with pytest.raises(RegistryError) as failure:
        agent.cycle()
    return time.monotonic() - started, str(failure.value)


def test_ssh_registry_that_never_answers_fails_the_cycle_at_the_connect_limit(
    silent: SilentRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTM_GIT_CONNECT_TIMEOUT", "1")
    elapsed, message = timed_failure(agent_for(tmp_path, ssh_url(silent)))
    assert elapsed < 8
    assert silent.connections, "ssh never reached the listener"
    # over ssh the poll is a fetch (one round trip on a shared connection), else an ls-remote
    assert f"-- {ssh_url(silent)} " in message and (
        " ls-remote " in message or " fetch " in message
    )
    assert "timed out" in message
    assert "connect 1 s" in message and "PTM_GIT_CONNECT_TIMEOUT" in message


def test_http_registry_that_never_answers_fails_the_cycle_at_the_inactivity_limit(
    silent: SilentRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTM_GIT_INACTIVITY_TIMEOUT", "2")
    elapsed, message = timed_failure(agent_for(tmp_path, http_url(silent)))
    assert elapsed < 10
    assert f"git ls-remote --heads -- {http_url(silent)}" in message
    assert "Operation too slow" in message and "inactivity 2 s" in message


def test_overall_limit_stops_a_git_call_and_says_which(
    silent: SilentRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTM_GIT_TIMEOUT", "1")
    monkeypatch.setenv("PTM_GIT_INACTIVITY_TIMEOUT", "60")
    elapsed, message = timed_failure(agent_for(tmp_path, http_url(silent)))
    assert elapsed < 5
    assert "git did not finish within 1 s" in message and "PTM_GIT_TIMEOUT" in message
    assert f"git ls-remote --heads -- {http_url(silent)}" in message


def test_watch_loop_backs_off_and_tries_again_against_a_silent_registry(
    silent: SilentRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTM_GIT_CONNECT_TIMEOUT", "1")
    agent = agent_for(tmp_path, ssh_url(silent), poll_interval=1)
    handler = FailedCycles()
    failures = handler.messages
    agent.log.addHandler(handler)
    stop = threading.Event()
    loop = threading.Thread(target=run_until_stopped, args=(agent, stop), daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while len(failures) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        loop.join(timeout=10)
        agent.log.removeHandler(handler)
    assert not loop.is_alive()
    assert [m.split(", retrying")[0] for m in failures[:2]] == [
        "cycle failed (1 in a row)",
        "cycle failed (2 in a row)",
    ]
    assert "retrying in 1s" in failures[0] and "retrying in 2s" in failures[1]
    assert "git clone" in failures[0] and "timed out" in failures[0]
    assert len(silent.connections) >= 2  # it did try again


def test_sigterm_ends_agent_run_while_git_hangs(silent: SilentRegistry, tmp_path: Path) -> None:
    config = site_config(tmp_path, ssh_url(silent))
    env = {**os.environ, "PTM_GIT_CONNECT_TIMEOUT": "300", "PTM_GIT_INACTIVITY_TIMEOUT": "300"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "ptm", "agent", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not silent.connections:
            assert time.monotonic() < deadline, "the agent never connected"
            assert agent.poll() is None, agent.communicate()
            time.sleep(0.05)
        time.sleep(0.5)  # git's ssh now waits for a banner that never comes
        stopped_at = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=15)
        took = time.monotonic() - stopped_at
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, stderr
    assert took < 5, f"agent took {took:.1f} s to stop"
    # The ssh that git started was stopped too: its connection was closed.
    connection = silent.connections[0]
    connection.settimeout(5)
    while connection.recv(4096):
        pass


def test_an_admins_own_ssh_command_is_left_alone(tmp_path: Path) -> None:
    limits = GitLimits(connect=7, inactivity=40)
    ours = deadline_environment({}, limits)
    assert ours["GIT_SSH_COMMAND"] == (
        "ssh -o ConnectTimeout=7 -o ServerAliveInterval=10 -o ServerAliveCountMax=4"
    )
    assert ours["GIT_HTTP_LOW_SPEED_TIME"] == "40"
    admin = {"GIT_SSH_COMMAND": "my-ssh", "GIT_HTTP_LOW_SPEED_TIME": "9"}
    theirs = deadline_environment(admin, limits)
    assert "GIT_SSH_COMMAND" not in theirs and "GIT_HTTP_LOW_SPEED_TIME" not in theirs
    GitRepo(tmp_path).run("config", "--global", "core.sshCommand", "ssh -F /etc/ptm/ssh_config")
    admin_ssh_command.cache_clear()
    try:
        assert "GIT_SSH_COMMAND" not in deadline_environment({}, limits)
    finally:
        admin_ssh_command.cache_clear()


def test_limits_from_the_environment_are_checked() -> None:
    assert GitLimits.from_environment({"PTM_GIT_TIMEOUT": "90"}) == GitLimits(call=90)
    with pytest.raises(Exception, match="PTM_GIT_CONNECT_TIMEOUT='soon'"):
        GitLimits.from_environment({"PTM_GIT_CONNECT_TIMEOUT": "soon"})
