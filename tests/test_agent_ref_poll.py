"""The agent's ls-refs poll end to end: an idle cycle over a real sshd starts no process, a
push is run, stop leaves no process, a hostile answer costs one warning, SIGTERM during a
silent session stops ``ptm agent run`` at once; gitolite3 answers."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from ptm.agent import Agent
from ptm.ref_poll import BranchHead, BranchPoll
from ptm.registry import init_registry, ssh_environment
from ptm.runtimes.docker import DockerRuntime
from ptm.siteconfig import load_site_config
from ptm.ssh_share import SharedConnection
from ptm.sync import TasksMirror
from ptm.workdir import WorkDir
from tests.agent_support import Researcher, write_site_config
from tests.ref_poll_support import (
    Remote,
    branch_head,
    children_started,
    polled_registry,
    processes_naming,
    upload_packs,
    wait_for,
)
from tests.ssh_servers import running_gitolite, ssh_command


def site_config(tmp_path: Path, remote: Remote) -> Path:
    """A site config for ``remote``'s registry, work folder ``tmp_path/w``."""
    path = write_site_config(tmp_path, "hospital-a", Path("/unused"))
    document = yaml.safe_load(path.read_text())
    keys = tmp_path / "keys" / "site"
    registry = {"url": remote.mirror.url, "ssh_key": str(keys), "branch": "main"}
    document["registry"] = {**registry, "known_hosts": str(tmp_path / "known_hosts")}
    document["workdir"] = str(tmp_path / "w")
    path.write_text(yaml.safe_dump(document))
    return path


@contextmanager
def ssh_site(tmp_path: Path, *, hostile: bool = False) -> Iterator[tuple[Agent, Remote]]:
    """An agent for a registry behind a real sshd, its shared connection up."""
    with polled_registry(tmp_path, hostile=hostile) as remote:
        agent = Agent(load_site_config(site_config(tmp_path, remote)), DockerRuntime(None))
        agent.start()
        agent.once()
        wait_for(agent.ssh.alive, "the agent's shared connection")
        yield agent, remote


@pytest.mark.docker
def test_an_idle_agent_cycle_starts_no_process_a_push_is_run_and_stop_leaves_none(
    tmp_path: Path, test_image: str
) -> None:
    with ssh_site(tmp_path) as (agent, remote):
        agent.cycle()  # reaps the master's starter (ssh -f's parent, started by agent.once)
        before = children_started()
        for _ in range(3):
            assert agent.cycle().idle
        assert children_started() == before  # no git, no ssh: ls-refs on the master only
        Researcher(remote.registry, tmp_path / "researcher").submit("picked", "true")
        report = agent.cycle()
        assert report.new_tasks == 1 and report.started == 1
        agent.drain()
        agent.publish()
        record = agent.ledger.status_of("picked")
        assert record is not None and record.state == "completed"
        socket_path = str(agent.ssh.socket)
        assert processes_naming(socket_path)  # the master
        agent.hand_back()
        wait_for(lambda: not processes_naming(socket_path), "the master's end")
        wait_for(lambda: not upload_packs(remote.registry), "the end of every git-upload-pack")


@pytest.mark.docker
def test_a_hostile_answer_costs_one_warning_and_the_agent_still_runs_the_task(
    tmp_path: Path, test_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    with ssh_site(tmp_path, hostile=True) as (agent, remote):
        remote.arm("bad-hex")
        Researcher(remote.registry, tmp_path / "researcher").submit("despite", "true")
        with caplog.at_level(logging.INFO, logger="ptm.ref_poll"):
            agent.once()
        warned = [
            r.getMessage()
            for r in caplog.records
            if r.name == "ptm.ref_poll" and r.levelno >= logging.WARNING
        ]
        assert len(warned) == 1 and "pkt-line length" in warned[0]
        record = agent.ledger.status_of("despite")
        assert record is not None and record.state == "completed"
        agent.hand_back()


GITOLITE_CONF = """repo registry
    RW+     = admin
    R       = hospital-a
"""


def test_ls_refs_through_gitolite_answers_like_git(tmp_path: Path) -> None:
    with running_gitolite(tmp_path, ["admin", "hospital-a"], GITOLITE_CONF) as host:
        seed = tmp_path / "seed.git"
        init_registry(seed, bare=True)
        pinned = host.ssh.known_hosts(tmp_path / "known_hosts")
        admin = {**os.environ, "GIT_SSH_COMMAND": ssh_command(host.keys["admin"].private, pinned)}
        push = ["git", "push", "-q", host.url("registry"), "main:main"]
        subprocess.run(push, cwd=seed, check=True, env=admin)
        key = host.keys["hospital-a"].private
        mirror = TasksMirror(
            tmp_path / "m" / "tasks",
            url=host.url("registry"),
            branch="main",
            ssh_key=key,
            known_hosts=pinned,
        )
        mirror.share = share = SharedConnection(mirror.url, tmp_path / "m" / "ssh")
        env = ssh_environment(key, pinned)
        share.ensure(env)
        wait_for(share.alive, "the shared connection")
        try:
            poll = BranchPoll(mirror.url, "main", mirror.session_command)
            assert poll.head() == BranchHead(branch_head(host.bare("registry")))
            assert poll.unavailable is None  # gitolite passed GIT_PROTOCOL on to git
        finally:
            share.close(env)


@pytest.mark.docker
def test_sigterm_during_a_silent_ls_refs_stops_the_agent_at_once_and_its_master(
    tmp_path: Path, test_image: str
) -> None:
    with polled_registry(tmp_path, hostile=True) as remote:
        command = [sys.executable, "-m", "ptm", "agent", "run", "-v"]
        with open(tmp_path / "agent.log", "wb") as log:
            agent = subprocess.Popen(
                [*command, "--config", str(site_config(tmp_path, remote))],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        socket_path = str(tmp_path / "w" / "ssh" / "c")
        try:
            wait_for(lambda: WorkDir(tmp_path / "w").load_state().processed, "a first cycle", 60)
            master = SharedConnection(remote.mirror.url, tmp_path / "w" / "ssh")
            wait_for(master.alive, "the agent's master")
            time.sleep(1.2)  # a poll over it: the next one is an ls-refs, not a git fetch
            remote.arm("silence")  # the next poll's session answers nothing (10 s deadline)
            wait_for(lambda: not (remote.server.folder / "trap").exists(), "a silent session")
            time.sleep(0.3)
            began = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=30) == 0
            assert time.monotonic() - began < 4  # not the 10 s of the session's deadline
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        wait_for(lambda: not processes_naming(socket_path), "the master's end", 10)
        assert (
            "ls-refs poll of refs/heads/main failed (the agent is stopping)"
            in (tmp_path / "agent.log").read_text()
        )
