"""A session on the agent's running OpenSSH master, opened without starting an ssh process.

An ``ssh`` client that joins a master (``ControlMaster=no``) does little more than hand its
stdin, stdout and stderr to the master over the control socket, yet starting it costs about
12 ms of CPU here. ptm speaks that small protocol itself (OpenSSH's ``PROTOCOL.mux``, version
4, spoken since OpenSSH 5.6): a hello each way, a new-session request naming the remote
command and the environment to pass on, then three pipe ends of ours as file descriptors, one
per message. The master runs the command on the host over its authenticated connection and
relays the pipes; closing the control socket ends the session. Every read has a deadline, and
ends early once the agent is stopping.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path

from ptm import process
from ptm.errors import PtmError

MUX_VERSION = 4
HELLO = 0x00000001
NEW_SESSION = 0x10000002
PERMISSION_DENIED = 0x80000002
FAILURE = 0x80000003
SESSION_OPENED = 0x80000006
NO_ESCAPE_CHAR = 0xFFFFFFFF
MAX_REPLY_BYTES = 64 * 1024
WAIT_SLICE_S = 0.1  # how often a wait for the master looks at the agent's stop


class NoMaster(PtmError):
    """No master answers on the control socket (not started yet, or gone)."""


class MuxRefused(PtmError):
    """The master refused the session, broke its protocol, or did not answer in time."""


def mux_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def session_request(command: str, env: Sequence[str]) -> bytes:
    """MUX_C_NEW_SESSION: no tty, X11, agent or subsystem, no escape character."""
    body = struct.pack(">II", NEW_SESSION, 0) + mux_string(b"")
    body += struct.pack(">IIIII", 0, 0, 0, 0, NO_ESCAPE_CHAR)
    body += mux_string(b"") + mux_string(os.fsencode(command))
    body += b"".join(mux_string(os.fsencode(variable)) for variable in env)
    return mux_string(body)


class MuxSession:
    """One session: ``stdin`` (write), ``stdout`` and ``stderr`` (read) are pipe ends of ours,
    non-blocking; ``close`` ends the session."""

    def __init__(self, control: socket.socket, stdin: int, stdout: int, stderr: int) -> None:
        self._control = control
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr

    def close(self) -> None:
        for fd in (self.stdin, self.stdout, self.stderr):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._control.close()


def open_session(path: Path, command: str, env: Sequence[str], *, deadline: float) -> MuxSession:
    """Run ``command`` on the host of the master listening on ``path``, passing ``env``
    (``NAME=value``; the master passes on what its own SendEnv allows)."""
    try:
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:  # out of descriptors, most likely
        raise MuxRefused(f"cannot open a socket for the shared SSH connection: {exc}") from exc
    try:
        _connect(control, path, deadline)
        control.sendall(mux_string(struct.pack(">II", HELLO, MUX_VERSION)))
        hello = _reply(control, deadline)
        if hello[:8] != struct.pack(">II", HELLO, MUX_VERSION):
            raise MuxRefused("the shared SSH connection speaks another mux protocol version")
        session = _hand_over(control, command, env, deadline)
    except OSError as exc:  # the master went away mid-exchange (a reset, a broken pipe)
        control.close()
        raise MuxRefused(f"the shared SSH connection broke off: {exc}") from exc
    except BaseException:
        control.close()
        raise
    return session


def _connect(control: socket.socket, path: Path, deadline: float) -> None:
    control.settimeout(_remaining(deadline))
    try:
        control.connect(os.fsencode(path))
    except OSError as exc:
        raise NoMaster(f"no shared SSH connection at {path}: {exc}") from exc


def _hand_over(
    control: socket.socket, command: str, env: Sequence[str], deadline: float
) -> MuxSession:
    """Send the request and the master's ends of three pipes; keep ours."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    theirs, ours = (stdin_r, stdout_w, stderr_w), (stdin_w, stdout_r, stderr_r)
    try:
        control.sendall(session_request(command, env))
        for fd in theirs:
            socket.send_fds(control, [b"\0"], [fd])
    except OSError as exc:
        _close(*theirs, *ours)
        raise MuxRefused(f"the shared SSH connection took no session: {exc}") from exc
    _close(*theirs)
    try:
        reply = _reply(control, deadline)
    except BaseException:
        _close(*ours)
        raise
    if reply[:4] != struct.pack(">I", SESSION_OPENED):
        _close(*ours)
        raise MuxRefused(f"the shared SSH connection refused the session: {_reason(reply)}")
    for fd in ours:
        os.set_blocking(fd, False)
    return MuxSession(control, *ours)


def _reply(control: socket.socket, deadline: float) -> bytes:
    (size,) = struct.unpack(">I", _exactly(control, 4, deadline))
    if size > MAX_REPLY_BYTES:
        raise MuxRefused(f"a mux reply of {size} bytes from the shared SSH connection")
    return _exactly(control, size, deadline)


def _exactly(control: socket.socket, size: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < size:
        if process.winding_down():
            raise MuxRefused("the agent is stopping")
        control.settimeout(min(_remaining(deadline), WAIT_SLICE_S))
        try:
            chunk = control.recv(size - len(data))
        except TimeoutError:
            continue
        except OSError as exc:
            raise MuxRefused(f"the shared SSH connection did not answer: {exc}") from exc
        if not chunk:
            raise MuxRefused("the shared SSH connection closed the control socket")
        data += chunk
    return bytes(data)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise MuxRefused("the shared SSH connection did not answer in time")
    return remaining


def _reason(reply: bytes) -> str:
    """The text of MUX_S_FAILURE / MUX_S_PERMISSION_DENIED (type, request id, string)."""
    kind = struct.unpack(">I", reply[:4])[0] if len(reply) >= 4 else None
    if kind in (FAILURE, PERMISSION_DENIED) and len(reply) >= 12:
        (size,) = struct.unpack(">I", reply[8:12])
        return reply[12 : 12 + min(size, 200)].decode("utf-8", "replace")
    return f"reply type {kind!r}"


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
