"""The one way ptm runs a subprocess.

``run`` is for short local commands with text output. ``run_bounded`` is for commands that may
hang on something outside ptm (git talking to a registry): every call has an overall deadline,
runs in its own process group (so git's ``ssh`` or ``curl`` helpers go with it), and is stopped
(SIGTERM, so git removes its lock files, then SIGKILL) when its deadline passes, when the caller
is interrupted, or when the whole process winds down (``wind_down``, from a SIGTERM handler).
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ptm.errors import CommandFailed, CommandTimedOut

# How often a waiting call looks at its deadline and at ``wind_down``: the latency of a stop.
POLL_SLICE = 0.1
# Between SIGTERM and SIGKILL: git needs a moment to remove its lock files.
TERM_GRACE = 1.0

# The moment (time.monotonic) after which no bounded call may run, once ``wind_down`` was called.
# Module state on purpose: a signal handler has to reach every call in every thread, and it may
# only set a value (taking a lock there could deadlock with the code it interrupted).
_stop_at: float | None = None


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


def run(
    cmd: Sequence[str],
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> tuple[int, str, str]:
    """Run ``cmd``; return (returncode, stdout, stderr). Raise CommandFailed when check fails."""
    full_env = {**os.environ, **env} if env is not None else None
    proc = subprocess.run(
        list(cmd),
        cwd=cwd,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(list(cmd), proc.returncode, proc.stdout, proc.stderr)
    return proc.returncode, proc.stdout, proc.stderr


def wind_down(grace: float) -> None:
    """Let running bounded calls finish for at most ``grace`` more seconds, then stop them;
    refuse new ones from then on. Safe to call from a signal handler (it only sets a value)."""
    global _stop_at
    deadline = time.monotonic() + grace
    if _stop_at is None or deadline < _stop_at:
        _stop_at = deadline


def winding_down() -> bool:
    return _stop_at is not None


def run_bounded(
    cmd: Sequence[str],
    *,
    cwd: Path | str | None,
    env: Mapping[str, str],
    stdin: bytes | None = None,
    timeout: float,
) -> Completed:
    """Run ``cmd`` to its end or until ``timeout`` seconds have passed (CommandTimedOut).

    ``env`` is the child's whole environment. OSError when the command cannot start."""
    command = list(cmd)
    deadline = time.monotonic() + timeout
    if _past(_stop_at):
        raise CommandTimedOut(command, timeout, stopping=True)
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = _exchange(proc, stdin, lambda: _check(command, deadline, timeout))
        _wait(proc, lambda: _check(command, deadline, timeout))
    except BaseException:
        _stop(proc)
        raise
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return Completed(proc.returncode, stdout, stderr)


def _check(command: list[str], deadline: float, timeout: float) -> None:
    stopping = _past(_stop_at)
    if stopping or time.monotonic() >= deadline:
        raise CommandTimedOut(command, timeout, stopping=stopping)


def _exchange(
    proc: subprocess.Popen[bytes], stdin: bytes | None, check: Callable[[], None]
) -> tuple[bytes, bytes]:
    """Write ``stdin`` and read stdout and stderr until all are closed, calling ``check``
    between slices of POLL_SLICE. (Popen.communicate cannot be retried in slices: on a retry it
    stops writing the rest of its input.)"""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    streams: dict[int, IO[bytes]] = {out: proc.stdout, err: proc.stderr}
    output: dict[int, list[bytes]] = {fd: [] for fd in streams}
    pending = memoryview(stdin or b"")
    with selectors.DefaultSelector() as selector:
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        if proc.stdin is not None and pending:
            streams[proc.stdin.fileno()] = proc.stdin
            selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
        elif proc.stdin is not None:
            proc.stdin.close()
        while selector.get_map():
            check()
            for key, _ in selector.select(POLL_SLICE):
                if key.events & selectors.EVENT_WRITE:
                    pending = _write_some(key.fd, pending)
                    done = not pending
                else:
                    chunk = os.read(key.fd, 65536)
                    output[key.fd].append(chunk)
                    done = not chunk
                if done:
                    selector.unregister(key.fd)
                    streams[key.fd].close()
    return b"".join(output[out]), b"".join(output[err])


def _write_some(fd: int, pending: memoryview) -> memoryview:
    """Write what the pipe takes without blocking (select said it has room for PIPE_BUF)."""
    try:
        written = os.write(fd, pending[: select.PIPE_BUF])
    except BrokenPipeError:  # the command stopped reading: the rest is not wanted
        return pending[len(pending) :]
    return pending[written:]


def _wait(proc: subprocess.Popen[bytes], check: Callable[[], None]) -> None:
    while True:
        check()
        try:
            proc.wait(timeout=POLL_SLICE)
            return
        except subprocess.TimeoutExpired:
            continue


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the child's process group, SIGKILL if it is still there after TERM_GRACE."""
    if proc.poll() is not None:
        return
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=TERM_GRACE)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _past(moment: float | None) -> bool:
    return moment is not None and time.monotonic() >= moment


class Session:
    """A command kept running to talk with (``git cat-file --batch-command``), under the same
    rules as ``run_bounded``: one overall deadline for the whole session, checked in every
    write and read, its own process group, stopped on a deadline, an interruption or
    ``wind_down``. Use it as a context manager; ``finish`` closes its input and waits for it."""

    def __init__(
        self, cmd: Sequence[str], *, cwd: Path | str | None, env: Mapping[str, str], timeout: float
    ) -> None:
        self.command = list(cmd)
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        if _past(_stop_at):
            raise CommandTimedOut(self.command, timeout, stopping=True)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finish/__exit__
        self._proc = subprocess.Popen(
            self.command,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        self._buffer = bytearray()

    def __enter__(self) -> Session:
        return self

    @property
    def pid(self) -> int:
        return self._proc.pid

    def __exit__(self, *exc: object) -> None:
        _stop(self._proc)
        self._close_streams()

    def send(self, data: bytes) -> None:
        """Write ``data`` to the command's input (BrokenPipeError if it stopped reading)."""
        assert self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        pending = memoryview(data)
        while pending:
            self._check()
            _, ready, _ = select.select([], [fd], [], POLL_SLICE)
            if ready:
                pending = pending[os.write(fd, pending[: select.PIPE_BUF]) :]

    def read_line(self, limit: int = 65536) -> bytes:
        """The next line of output without its newline; EOFError at the end or past ``limit``."""
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > limit:
                raise EOFError(f"a line of output longer than {limit} bytes")
            self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    def read_exact(self, size: int) -> bytes:
        return b"".join(self.read_chunks(size))

    def read_chunks(self, size: int, chunk: int = 1024**2) -> Iterator[bytes]:
        """The next ``size`` bytes of output, at most ``chunk`` at a time (never all at once)."""
        left = size
        while left > 0:
            if not self._buffer:
                self._fill(min(left, chunk))
            piece = bytes(self._buffer[: min(left, chunk)])
            del self._buffer[: len(piece)]
            left -= len(piece)
            yield piece

    def finish(self) -> Completed:
        """Close the input, wait for the command's end; its code and what it wrote to stderr."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            _wait(self._proc, self._check)
        except BaseException:
            _stop(self._proc)
            raise
        self._stderr.seek(0)
        stderr = self._stderr.read()
        self._close_streams()
        return Completed(self._proc.returncode, bytes(self._buffer), stderr)

    def _fill(self, want: int = 65536) -> None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while True:
            self._check()
            ready, _, _ = select.select([fd], [], [], POLL_SLICE)
            if ready:
                data = os.read(fd, max(want, 65536))
                if not data:
                    raise EOFError("the command's output ended early")
                self._buffer += data
                return

    def _check(self) -> None:
        _check(self.command, self._deadline, self._timeout)

    def _close_streams(self) -> None:
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()
