"""One SSH connection to an ``ssh://`` registry, shared by all of the agent's git calls.

Without it every poll pays a whole SSH handshake (key exchange, authentication). The agent
keeps one ``ssh -M -N`` master running in the background (OpenSSH connection sharing), its
socket in ``<workdir>/ssh/``; each git call's ``ssh`` joins it as a client
(``ControlMaster=no``), and the poll's ``ls-refs`` opens its session on it directly
(ptm.ref_poll, ptm.ssh_mux). The master passes ``GIT_PROTOCOL`` on (``SendEnv``: it, not
the client, decides), so git talks protocol v2 where the host's sshd accepts it. A client
finds no master (not started yet, gone with the network) and simply connects on its own, so
sharing never decides whether a call works, and every call keeps its deadline (ptm.gitrepo).
The master is asked to exit when the agent stops, ends by itself when unused for a while, and
is started again when it is gone; one a killed agent left is replaced at the first cycle. An
admin's own ``GIT_SSH`` or ``core.sshCommand`` is left alone.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from ptm import process
from ptm.errors import CommandTimedOut
from ptm.gitrepo import GitLimits, admin_ssh_command
from ptm.ssh_url import parse_ssh_url

SOCKET_NAME = "c"  # one registry per agent: a fixed, short name (socket paths are ~100 bytes)
MAX_SOCKET_PATH = 100
RESTART_AFTER_S = 10.0  # a master that ended is started again at most this often


def ssh_destination(url: str) -> list[str] | None:
    """``ssh`` arguments naming the host of an SSH registry URL (None: not an SSH URL)."""
    parsed = parse_ssh_url(url)
    return None if parsed is None else parsed.destination()


def _base_command(env: Mapping[str, str]) -> str | None:
    """The ssh command git would run for ``env`` (None: the admin chose one of their own)."""
    if "GIT_SSH_COMMAND" in env:
        return env["GIT_SSH_COMMAND"]
    if os.environ.get("GIT_SSH") or admin_ssh_command():
        return None
    base = os.environ.get("GIT_SSH_COMMAND")
    return base or f"ssh {GitLimits.from_environment(os.environ).ssh_options()}"


def _ssh_argv(base: str, args: list[str]) -> list[str]:
    """``base`` (an ssh command line, as in GIT_SSH_COMMAND) run with ``args`` as git does."""
    return ["sh", "-c", f'exec {base} "$@"', "ssh", *args]


class SharedConnection:
    """The master connection for one registry URL; ``environment`` is what git calls use."""

    def __init__(self, url: str, folder: Path, *, poll_interval: float = 30.0) -> None:
        self.url = url
        self.folder = folder
        self.socket = folder / SOCKET_NAME
        # The master ends by itself once no call used it for this long (so one a killed agent
        # left goes away too); a longer poll restarts it at the next cycle.
        self.persist_s = max(60, round(3 * poll_interval))
        self._destination = ssh_destination(url)
        self._starter: subprocess.Popen[bytes] | None = None
        self._started_at = -RESTART_AFTER_S
        self._first = True  # no master found yet: one that answers now is not this agent's

    @property
    def usable(self) -> bool:
        return self._destination is not None and len(str(self.socket)) <= MAX_SOCKET_PATH

    def _path_option(self) -> str:
        return f'ControlPath="{str(self.socket).replace("%", "%%")}"'

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` (from registry.ssh_environment) with ssh joining the shared connection."""
        base = _base_command(env) if self.usable else None
        if base is None:
            return dict(env)
        options = ["-o", "ControlMaster=no", "-o", self._path_option()]
        command = " ".join([base, *(shlex.quote(o) for o in options)])
        return {**env, "GIT_SSH_COMMAND": command}

    def alive(self) -> bool:
        """Whether a master answers on the socket (a connect, no process started)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def ensure(self, env: Mapping[str, str]) -> None:
        """Start a master unless one answers (never waits for it: until its socket is there,
        each call connects on its own)."""
        base = _base_command(env) if self.usable else None
        if base is None or self._destination is None:
            return
        if self._starter is not None and self._starter.poll() is None:
            return  # still authenticating
        inherited, self._first = self._first, False
        if self.alive():
            if not inherited:
                return
            # Left by a killed agent, maybe an older ptm whose master passes no GIT_PROTOCOL
            # on (this agent would use it for as long as it runs): replace it.
            self.close(env)
        now = time.monotonic()
        if now - self._started_at < RESTART_AFTER_S:
            return
        self._started_at = now
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)  # a master that died without removing it
        options = ["-M", "-N", "-f", "-o", "ControlMaster=yes"]
        options += ["-o", f"ControlPersist={self.persist_s}", "-o", self._path_option()]
        # The master decides which variables its sessions pass on: git's protocol v2 needs it.
        options += ["-o", "SendEnv=GIT_PROTOCOL"]
        # Not process.run_bounded: once authenticated ssh forks the master into the
        # background and this process ends; ``ensure`` reaps it (poll above).
        self._starter = subprocess.Popen(
            _ssh_argv(base, [*options, *self._destination]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def close(self, env: Mapping[str, str]) -> None:
        """Ask the master to exit (bounded); it would end by itself after ``persist_s``."""
        base = _base_command(env) if self.usable else None
        starter, self._starter = self._starter, None
        if starter is not None and starter.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(starter.pid, signal.SIGTERM)
            starter.wait()
        if base is None or not self.alive():
            return
        args = ["-o", self._path_option(), "-O", "exit", *(self._destination or [])]
        command = _ssh_argv(base, args)
        with contextlib.suppress(OSError, CommandTimedOut):
            process.run_bounded(command, cwd=self.folder, env=os.environ, timeout=10)
