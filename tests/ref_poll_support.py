"""Helpers for the ls-refs poll's tests: a bare registry behind a real sshd with a site's
mirror sharing one master, a hostile host (an authorized_keys forced command that misbehaves
once per armed trap), and looks at processes by pid."""

from __future__ import annotations

import resource
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ptm.ref_poll import BranchPoll
from ptm.registry import init_registry, ssh_environment
from ptm.ssh_share import SharedConnection
from ptm.sync import TasksMirror
from tests.ssh_servers import SshServer, forced_command, make_ssh_key, running_sshd

OID = "0123456789abcdef0123456789abcdef01234567"

HOSTILE = r"""#!/bin/sh
# Misbehaves in the one session that takes the armed trap; serves git as sshd would otherwise.
trap_file={folder}/trap
if mv "$trap_file" "$trap_file.taken" 2>/dev/null; then
    v2='000eversion 2\n0013ls-refs=unborn\n0000'
    case "$(cat "$trap_file.taken")" in
        silent-greeting) exec cat >/dev/null ;;
        garbage-greeting) printf 'HTTP/1.1 200 OK\r\n\r\n'; exec cat >/dev/null ;;
        bad-hex) printf "$v2"; printf 'zz3d'; exec cat >/dev/null ;;
        oversize) printf "$v2"; printf 'fff1xxxxxxxxxxxx'; exec cat >/dev/null ;;
        endless) printf "$v2"; exec yes "003a{oid} refs/heads/x" ;;
        silence) printf "$v2"; exec cat >/dev/null ;;
        trickle) printf "$v2"; while printf 1; do sleep 0.1; done ;;
        bad-oid) printf "$v2"; printf '003d%s refs/heads/main\n0000' {upper}; exec cat >/dev/null ;;
        dies) printf "$v2"; kill -9 $$ ;;
        refused) echo 'fatal: no such repository' >&2; exit 128 ;;
    esac
    exit 0
fi
exec sh -c "$SSH_ORIGINAL_COMMAND"
"""
MODES = [
    "silent-greeting",
    "garbage-greeting",
    "bad-hex",
    "oversize",
    "endless",
    "silence",
    "trickle",
    "bad-oid",
    "dies",
    "refused",
]


@dataclass(frozen=True)
class Remote:
    server: SshServer
    registry: Path
    mirror: TasksMirror
    share: SharedConnection
    env: dict[str, str]

    def poll(self, *, within: float = 10.0, retry_after: float = 5.0) -> BranchPoll:
        command = self.mirror.session_command
        return BranchPoll(self.mirror.url, "main", command, within=within, retry_after=retry_after)

    def arm(self, mode: str) -> None:
        (self.server.folder / "trap").write_text(mode)

    def log_count(self, text: str) -> int:
        return (self.server.folder / "sshd.log").read_text().count(text)


def hostile_key_line(folder: Path, key_line: str) -> str:
    script = folder / "hostile.sh"
    script.write_text(HOSTILE.format(folder=folder / "d", oid=OID, upper=OID.upper()))
    script.chmod(0o755)
    return forced_command(key_line, str(script))


@contextmanager
def polled_registry(
    tmp_path: Path, *, git_protocol: bool = True, hostile: bool = False
) -> Iterator[Remote]:
    """A bare registry behind a real sshd and a site's mirror of it sharing one master."""
    registry = tmp_path / "registry.git"
    init_registry(registry, bare=True)
    key = make_ssh_key(tmp_path / "keys", "site")
    line = hostile_key_line(tmp_path, key.public_line) if hostile else key.public_line
    with running_sshd(tmp_path / "d", [line], git_protocol=git_protocol) as server:
        url = server.url(str(registry).lstrip("/"))
        known_hosts = server.known_hosts(tmp_path / "known_hosts")
        env = ssh_environment(key.private, known_hosts)
        mirror = TasksMirror(
            tmp_path / "m" / "tasks",
            url=url,
            branch="main",
            ssh_key=key.private,
            known_hosts=known_hosts,
        )
        share = SharedConnection(url, tmp_path / "m" / "ssh")
        mirror.share = share
        share.ensure(env)
        wait_for(share.alive, "the shared connection")
        mirror.ensure_clone()
        try:
            yield Remote(server, registry, mirror, share, env)
        finally:
            share.close(env)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def branch_head(registry: Path) -> str:
    done = subprocess.run(
        ["git", "rev-parse", "refs/heads/main"], cwd=registry, capture_output=True, text=True
    )
    return done.stdout.strip()


def children_started() -> int:
    """Page faults of every child this process has waited for: any process started and
    reaped (an ssh client, a git) adds hundreds."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt


def upload_packs(registry: Path) -> list[int]:
    """Pids of the git-upload-pack processes serving ``registry`` (the remote side)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"upload-pack" in command and str(registry).encode() in command:
            found.append(int(entry.name))
    return found


def master_pid(polled: Remote) -> int:
    destination = ["-p", str(polled.server.port), f"{polled.server.user}@127.0.0.1"]
    done = subprocess.run(
        ["ssh", "-o", f"ControlPath={polled.share.socket}", "-O", "check", *destination],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(done.stderr.split("pid=")[1].split(")")[0])


def processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
