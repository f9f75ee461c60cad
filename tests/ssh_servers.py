"""Real git servers on loopback for tests: Debian's OpenSSH sshd in a private folder, and
gitolite3 behind it with per-branch write rules (scripts/git-peers installs both).

sshd runs as the user running the tests (root in CI) on a free loopback port, with its own
config, host key, pid file and authorized_keys; it is stopped by its pid. gitolite3 lives in a
private HOME; each authorized_keys line runs ``gitolite-shell <user>`` with that HOME.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures_docker import free_loopback_port, unavailable

SSHD = Path("/usr/sbin/sshd")
GITOLITE_SHELL = Path("/usr/share/gitolite3/gitolite-shell")


@dataclass(frozen=True)
class SshKey:
    private: Path
    public_line: str


def make_ssh_key(folder: Path, name: str) -> SshKey:
    folder.mkdir(parents=True, exist_ok=True)
    private = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(private)],
        check=True,
    )
    return SshKey(private, private.with_name(name + ".pub").read_text().strip())


@dataclass(frozen=True)
class SshServer:
    port: int
    user: str
    host_key_line: str  # "ssh-ed25519 AAAA…"
    folder: Path

    def known_hosts(self, path: Path) -> Path:
        path.write_text(f"[127.0.0.1]:{self.port} {self.host_key_line}\n")
        return path

    def url(self, path: str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}/{path}"


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"sshd exited: {log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"sshd did not listen on {port}")


@contextmanager
def running_sshd(
    folder: Path, authorized_keys: list[str], *, git_protocol: bool = True
) -> Iterator[SshServer]:
    """An sshd on a free loopback port that admits exactly ``authorized_keys``; with
    ``git_protocol`` it accepts git's ``GIT_PROTOCOL`` variable (protocol v2), as GitHub's and
    GitLab's do (``AcceptEnv GIT_PROTOCOL``)."""
    if not SSHD.exists():
        unavailable("no OpenSSH server (run scripts/git-peers packages)")
    folder.mkdir(parents=True, exist_ok=True)
    host_key = make_ssh_key(folder, "ssh_host_ed25519_key")
    (folder / "authorized_keys").write_text("".join(line + "\n" for line in authorized_keys))
    port = free_loopback_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key.private}\n"
        f"PidFile {folder / 'sshd.pid'}\nAuthorizedKeysFile {folder / 'authorized_keys'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nAllowTcpForwarding no\nX11Forwarding no\n"
        # SHLVL: bash, the session's shell here, reads ~/.bashrc when run by sshd at level 1;
        # this machine's root's one (pyenv init) costs 200 ms per session, a git host's not.
        "LogLevel VERBOSE\nSetEnv SHLVL=1\n" + ("AcceptEnv GIT_PROTOCOL\n" if git_protocol else "")
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = folder / "sshd.log"
    # No pipe of ours in sshd (its log goes to the file): a session a client keeps open after
    # the test (an agent's shared connection) must not hold the test runner's output open.
    process = subprocess.Popen(
        [str(SSHD), "-D", "-e", "-f", str(config), "-E", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, log)
        key_line = " ".join(host_key.public_line.split()[:2])
        yield SshServer(port, getpass.getuser(), key_line, folder)
    finally:
        process.terminate()
        process.wait(timeout=20)


def forced_command(key_line: str, command: str) -> str:
    """An authorized_keys line that runs ``command`` for every session of ``key_line``
    (the client's command in SSH_ORIGINAL_COMMAND), as gitolite's lines do."""
    return f'command="{command}",no-port-forwarding,no-X11-forwarding,no-pty {key_line}'


@dataclass(frozen=True)
class GitoliteHost:
    home: Path
    ssh: SshServer
    keys: Mapping[str, SshKey]

    def url(self, repo: str) -> str:
        return self.ssh.url(repo)

    def bare(self, repo: str) -> Path:
        return self.home / "repositories" / f"{repo}.git"


def gitolite_env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "GIT_CONFIG_GLOBAL": str(home / ".gitconfig")}


@contextmanager
def running_gitolite(folder: Path, users: list[str], conf: str) -> Iterator[GitoliteHost]:
    """gitolite3 with ``users`` (each with its own key; the first one is the admin) and the
    access rules ``conf`` (gitolite.conf syntax), served over a private sshd."""
    if shutil.which("gitolite") is None or not GITOLITE_SHELL.exists():
        unavailable("no gitolite3 (run scripts/git-peers packages)")
    home = folder / "gitolite-home"
    home.mkdir(parents=True)
    (home / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n")
    keys = {user: make_ssh_key(folder / "keys", user) for user in users}
    admin = users[0]
    admin_pub = folder / f"{admin}.pub"
    admin_pub.write_text(keys[admin].public_line + "\n")
    env = gitolite_env(home)
    subprocess.run(
        ["gitolite", "setup", "-pk", str(admin_pub)], env=env, check=True, capture_output=True
    )
    keydir = home / ".gitolite" / "keydir"
    for user, key in keys.items():
        (keydir / f"{user}.pub").write_text(key.public_line + "\n")
    (home / ".gitolite" / "conf" / "gitolite.conf").write_text(conf)
    # The documented way to apply a conf edited on the server (no gitolite-admin push).
    subprocess.run(["gitolite", "compile"], env=env, check=True, capture_output=True)
    subprocess.run(
        ["gitolite", "trigger", "POST_COMPILE"], env=env, check=True, capture_output=True
    )
    lines = [
        f'command="env HOME={home} {GITOLITE_SHELL} {user}",no-port-forwarding,'
        f"no-X11-forwarding,no-agent-forwarding,no-pty {key.public_line}"
        for user, key in keys.items()
    ]
    with running_sshd(folder / "sshd", lines) as ssh:
        yield GitoliteHost(home, ssh, keys)


def ssh_command(key: Path, known_hosts: Path) -> str:
    """A GIT_SSH_COMMAND for test-side git as one user (the admin seeding a repository)."""
    return (
        f"ssh -i {key} -o IdentitiesOnly=yes -o BatchMode=yes "
        f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"
    )
