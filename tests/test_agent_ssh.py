"""The agent against registries behind a real OpenSSH sshd and gitolite3 on loopback: a pinned
host key (registry.known_hosts) is used for every git call, and a push the host refuses for
permissions is named as a permanent error."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ptm.agent import Agent
from ptm.errors import RegistryError
from ptm.runtimes.docker import DockerRuntime
from ptm.siteconfig import load_site_config
from tests.agent_support import Researcher, write_site_config
from tests.ssh_servers import make_ssh_key, running_gitolite, running_sshd, ssh_command

pytestmark = pytest.mark.docker


def ssh_agent(folder: Path, settings: dict[str, str]) -> Agent:
    """An agent whose registry section is ``settings`` (url, ssh_key, known_hosts)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = write_site_config(folder, "hospital-a", Path("/unused"))
    document = yaml.safe_load(path.read_text())
    document["registry"] = {"branch": "main", **settings}
    path.write_text(yaml.safe_dump(document))
    agent = Agent(load_site_config(path), DockerRuntime(None))
    agent.start()
    return agent


def test_the_agent_pins_the_registry_host_key(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    key = make_ssh_key(tmp_path / "deploy", "deploy_key")
    Researcher(bare_registry, tmp_path / "researcher").submit("over-ssh", "true")
    with running_sshd(tmp_path / "sshd", [key.public_line]) as server:
        url = server.url(str(bare_registry).lstrip("/"))
        pinned = server.known_hosts(tmp_path / "known_hosts")
        registry = {"url": url, "ssh_key": str(key.private), "known_hosts": str(pinned)}
        agent = ssh_agent(tmp_path / "good", registry)
        agent.once()
        record = agent.ledger.status_of("over-ssh")
        assert record is not None and record.state == "completed"

        other = make_ssh_key(tmp_path / "other", "other_host_key")
        wrong = tmp_path / "wrong_known_hosts"
        wrong.write_text(f"[127.0.0.1]:{server.port} {' '.join(other.public_line.split()[:2])}\n")
        registry = {**registry, "known_hosts": str(wrong)}
        with pytest.raises(RegistryError, match=r"[Hh]ost key"):
            ssh_agent(tmp_path / "bad", registry)


def test_one_shared_ssh_connection_serves_every_poll_and_ends_with_the_agent(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    key = make_ssh_key(tmp_path / "deploy", "deploy_key")
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("first", "true")
    with running_sshd(tmp_path / "sshd", [key.public_line]) as server:
        url = server.url(str(bare_registry).lstrip("/"))
        pinned = server.known_hosts(tmp_path / "known_hosts")
        registry = {"url": url, "ssh_key": str(key.private), "known_hosts": str(pinned)}
        agent = ssh_agent(tmp_path / "s", registry)
        agent.once()
        deadline = time.monotonic() + 20
        while not agent.ssh.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert agent.ssh.alive(), "no shared connection"
        log = server.folder / "sshd.log"
        logins = log.read_text().count("Accepted publickey")
        researcher.submit("second", "true")
        for _ in range(3):
            agent.once()
        assert log.read_text().count("Accepted publickey") == logins  # no new login
        record = agent.ledger.status_of("second")
        assert record is not None and record.state == "completed"
        agent.hand_back()
        assert not agent.ssh.alive()


GITOLITE_CONF = """repo registry
    RW+                       = admin
    R                         = hospital-a
    RW  refs/heads/results/other-site = hospital-a
"""


def test_a_push_refused_for_permissions_is_named_a_permanent_error(
    tmp_path: Path, test_image: str
) -> None:
    with running_gitolite(tmp_path, ["admin", "hospital-a"], GITOLITE_CONF) as host:
        from ptm.registry import init_registry

        seed = tmp_path / "seed.git"
        init_registry(seed, bare=True)
        Researcher(seed, tmp_path / "researcher").submit("denied", "true")
        pinned = host.ssh.known_hosts(tmp_path / "known_hosts")
        admin = {**os.environ, "GIT_SSH_COMMAND": ssh_command(host.keys["admin"].private, pinned)}
        subprocess.run(
            ["git", "push", "-q", host.url("registry"), "main:main"],
            cwd=seed,
            check=True,
            env=admin,
        )
        registry = {
            "url": host.url("registry"),
            "ssh_key": str(host.keys["hospital-a"].private),
            "known_hosts": str(pinned),
        }
        agent = ssh_agent(tmp_path / "site", registry)
        agent.once()
        warnings = "\n".join(agent.workdir.load_state().warnings)
        assert "refuses this site's push to results/hospital-a for permissions" in warnings
        assert "permanent" in warnings
        assert agent.ledger.unpushed()  # kept locally, nothing lost
