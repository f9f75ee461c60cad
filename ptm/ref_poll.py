"""The tasks branch's head from one long-lived ``git-upload-pack`` (git protocol v2).

A poll that starts ``git fetch`` costs a git process and an ssh client each time (15-25 ms of
CPU). Instead the agent keeps one ``git-upload-pack`` session open on the registry's host over
the shared SSH connection (ptm.ssh_share); each poll writes one ``ls-refs`` request and reads the
answer, and only a head that moved is fetched. The server must pass ``GIT_PROTOCOL`` on (sshd's
``AcceptEnv GIT_PROTOCOL``); one that answers in protocol v0 is recognised from its first line,
and the agent then fetches at every poll as before.

The server may be hostile: each read has a deadline, pkt-lines are parsed strictly (four hex
digits, 5 to 65520 bytes), an answer is capped in lines and bytes, an object id is 40 lowercase
hex digits. Anything else ends the session (its process group is killed) and that poll falls
back to a fetch; a new session is tried later, with a growing pause.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from ptm import process
from ptm.console import printable
from ptm.errors import PtmError
from ptm.urls import redact_url

LARGE_PACKET_MAX = 65520  # git's limit for one pkt-line, its 4 length digits included
MAX_LINES = 1024  # per answer: ls-refs for one prefix names a handful of refs
MAX_ANSWER_BYTES = 256 * 1024
MAX_STDERR_BYTES = 2048  # what is kept of the server's messages, for a warning
OPEN_DEADLINE_S = 10.0  # the host starts git-upload-pack and advertises its capabilities
ANSWER_DEADLINE_S = 5.0
FIRST_RETRY_S = 5.0
MAX_RETRY_S = 600.0
READ_SLICE_S = 0.1  # how often a waiting read looks at the agent's stop
OID = re.compile(rb"[0-9a-f]{40}")
LENGTH = re.compile(rb"[0-9a-f]{4}")
FLUSH = b"0000"
DELIM = b"0001"

log = logging.getLogger("ptm.ref_poll")


class ProtocolViolation(PtmError):
    """The session's answer broke git's protocol or one of ptm's caps."""


class SessionLost(PtmError):
    """The session did not answer in time, or could not start."""


class SessionEnded(SessionLost):
    """The session's output ended (the host or the SSH connection closed it)."""


class NoProtocolV2(PtmError):
    """The host answered in protocol v0/v1: its sshd does not pass GIT_PROTOCOL on."""


@dataclass(frozen=True)
class BranchHead:
    """What the registry's ``ls-refs`` said of one branch: its head, None when it has none."""

    oid: str | None


@dataclass(frozen=True)
class SessionCommand:
    """How to start ``git-upload-pack`` on the registry's host: argv and whole environment."""

    argv: Sequence[str]
    env: Mapping[str, str]


def git_quoted(text: str) -> str:
    """``text`` in single quotes as git's sq_quote_buf writes it (``'`` and ``!`` escaped)."""
    return "'" + text.replace("'", "'\\''").replace("!", "'\\!'") + "'"


def upload_pack_command(path: str) -> str:
    """The remote command git sends over ssh for ``path`` (connect.c), so gitolite and
    git-shell see what they know."""
    return f"git-upload-pack {git_quoted(path)}"


def repository_path(url: str) -> str | None:
    """The repository path git sends for an SSH registry URL (None: not one ptm polls)."""
    if url.startswith("ssh://"):
        rest = unquote(url, errors="surrogateescape")[len("ssh://") :]
        slash = rest.find("/")
        if slash <= 0:
            return None
        path = rest[slash:]
        return path[1:] if path.startswith("/~") else path
    head, colon, path = url.partition(":")
    if not colon or not head or "/" in head or head.startswith("[") or not path:
        return None
    return path


def pkt_line(payload: bytes) -> bytes:
    return b"%04x" % (len(payload) + 4) + payload


def ls_refs_request(ref: str) -> bytes:
    prefix = pkt_line(b"ref-prefix " + ref.encode() + b"\n")
    return pkt_line(b"command=ls-refs\n") + DELIM + prefix + FLUSH


def split_packet(buffer: bytes | bytearray) -> tuple[bytes, int] | None:
    """The first pkt-line of ``buffer``: (payload without its newline, bytes used), with b""
    for a flush; None while ``buffer`` holds no whole one. Sizes are never trusted."""
    if len(buffer) < 4:
        return None
    head = bytes(buffer[:4])
    if not LENGTH.fullmatch(head):
        raise ProtocolViolation(f"a pkt-line length that is not 4 lowercase hex digits: {head!r}")
    size = int(head, 16)
    if size == 0:
        return b"", 4
    if size <= 4 or size > LARGE_PACKET_MAX:
        raise ProtocolViolation(f"a pkt-line of length {size} (5 to {LARGE_PACKET_MAX} here)")
    if len(buffer) < size:
        return None
    payload = bytes(buffer[4:size])
    return payload.removesuffix(b"\n"), size


def protocol_of(first: bytes) -> int:
    """2 when the first line of the host's answer is protocol v2's, 0 for v0/v1 (a ref
    advertisement); ProtocolViolation for anything else."""
    if first == b"version 2":
        return 2
    if first == b"version 1" or (OID.fullmatch(first[:40]) and first[40:41] == b" "):
        return 0
    raise ProtocolViolation(f"an answer that is no git protocol: {printable(first[:60])!r}")


def check_capabilities(lines: Sequence[bytes]) -> None:
    """A v2 advertisement must offer ``ls-refs`` and SHA-1 object ids."""
    names = {line.split(b"=", 1)[0] for line in lines}
    if b"ls-refs" not in names:
        raise NoProtocolV2("the host's git-upload-pack offers no ls-refs")
    formats = [line for line in lines if line.startswith(b"object-format=")]
    if formats and formats != [b"object-format=sha1"]:
        raise NoProtocolV2(f"the registry uses {printable(formats[0].decode(errors='replace'))}")


def head_in(lines: Sequence[bytes], ref: str) -> str | None:
    """The object id ``ls-refs`` gave for exactly ``ref`` (None: not there); every line must
    read ``<40 lowercase hex> <name>[ <attribute>…]``."""
    wanted = ref.encode()
    found: bytes | None = None
    for line in lines:
        oid, space, rest = line.partition(b" ")
        name = rest.split(b" ", 1)[0]
        if not space or not name or not OID.fullmatch(oid):
            raise ProtocolViolation(f"an ls-refs line that is not '<oid> <ref>': {line[:80]!r}")
        if name == wanted:
            if found is not None and found != oid:
                raise ProtocolViolation(f"two heads for {ref}")
            found = oid
    return found.decode() if found is not None else None


class UploadPackSession:
    """One running ``git-upload-pack`` (an ssh client in its own process group) and the bytes
    read from it that no answer used yet."""

    def __init__(self, command: SessionCommand) -> None:
        self._proc = subprocess.Popen(
            list(command.argv),
            env=dict(command.env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._in, self._out = self._proc.stdin.fileno(), self._proc.stdout.fileno()
        self._err = self._proc.stderr.fileno()
        for fd in (self._in, self._out, self._err):
            os.set_blocking(fd, False)
        self._poller = select.poll()
        self._poller.register(self._out, select.POLLIN)
        self._poller.register(self._err, select.POLLIN)
        self._buffer = bytearray()
        self.stderr = bytearray()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def answer(self, within: float) -> list[bytes]:
        """The lines up to the next flush, read within ``within`` seconds and the caps."""
        deadline = time.monotonic() + within
        lines: list[bytes] = []
        total = 0
        while True:
            found = split_packet(self._buffer)
            if found is None:
                self._fill(deadline, within)
                continue
            payload, used = found
            del self._buffer[:used]
            if not payload:
                return lines
            lines.append(payload)
            total += used
            if len(lines) > MAX_LINES or total > MAX_ANSWER_BYTES:
                raise ProtocolViolation(
                    f"an answer of over {MAX_LINES} lines or {MAX_ANSWER_BYTES} bytes"
                )

    def first_line(self, within: float) -> bytes:
        """The first line of the host's greeting (the rest stays buffered)."""
        deadline = time.monotonic() + within
        while (found := split_packet(self._buffer)) is None:
            self._fill(deadline, within)
        payload, used = found
        del self._buffer[:used]
        return payload

    def send(self, data: bytes) -> None:
        """Write a request (far below the pipe's size: it never waits)."""
        try:
            written = os.write(self._in, data)
        except (BrokenPipeError, BlockingIOError) as exc:
            raise SessionLost(f"the session takes no request ({exc})") from exc
        if written != len(data):
            raise SessionLost("the session takes no more requests (its input is full)")

    def _fill(self, deadline: float, within: float) -> None:
        """Read what is there, waiting until ``deadline`` (SessionLost after it)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SessionLost(f"no answer within {within:g} s")
            if process.winding_down():
                raise SessionLost("the agent is stopping")
            events = self._poller.poll(1000 * min(remaining, READ_SLICE_S))
            if any(self._read(fd) for fd, _ in events):
                return

    def _read(self, fd: int) -> bool:
        """Take one chunk from ``fd``; True when the answer's buffer grew."""
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if fd == self._err:
            if not chunk:
                self._poller.unregister(fd)
            self.stderr = (self.stderr + chunk)[-MAX_STDERR_BYTES:]
            return False
        if not chunk:
            raise SessionEnded("the session ended")
        self._buffer += chunk
        return True

    def end(self, *, politely: bool) -> None:
        """End the session: a flush asks the server to finish; then its process group is
        stopped, and the process waited for."""
        if politely and self._proc.poll() is None:
            with contextlib.suppress(PtmError):
                self.send(FLUSH)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._close_input()
                self._proc.wait(timeout=1.0)
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _close_input(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()


def open_session(command: SessionCommand, within: float) -> UploadPackSession:
    """Start ``git-upload-pack`` and read its greeting: NoProtocolV2 for a v0 host."""
    session = UploadPackSession(command)
    try:
        if protocol_of(session.first_line(within)) != 2:
            raise NoProtocolV2("the host answered in protocol v0 (its sshd drops GIT_PROTOCOL)")
        check_capabilities(session.answer(within))
    except BaseException:
        session.end(politely=False)
        raise
    return session


class BranchPoll:
    """The head of one branch, asked of one session kept open across polls.

    ``head`` returns None whenever the session cannot answer this time (none yet, just ended,
    broken, v2 unavailable): the caller then fetches, as it would without a session.
    ``command`` says how to start one, or None while that is not possible (no shared SSH
    connection yet)."""

    def __init__(
        self,
        url: str,
        branch: str,
        command: Callable[[], SessionCommand | None],
        *,
        open_within: float = OPEN_DEADLINE_S,
        answer_within: float = ANSWER_DEADLINE_S,
    ) -> None:
        self.shown = redact_url(url)
        self.ref = f"refs/heads/{branch}"
        self._command = command
        self._open_within = open_within
        self._answer_within = answer_within
        self._session: UploadPackSession | None = None
        self._retry_at = 0.0
        self._pause = FIRST_RETRY_S
        self._polls = 0
        self.unavailable: str | None = None  # why v2 is not used for good (None: it is)

    @property
    def session_pid(self) -> int | None:
        return self._session.pid if self._session is not None else None

    def head(self) -> BranchHead | None:
        """The branch's head as the registry says now; None: fetch instead this time."""
        session = self._session or self._open()
        if session is None:
            return None
        try:
            session.send(ls_refs_request(self.ref))
            oid = head_in(session.answer(self._answer_within), self.ref)
        except (SessionLost, ProtocolViolation) as exc:
            self._failed(exc, session)
            return None
        self._pause = FIRST_RETRY_S
        return BranchHead(oid)

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.end(politely=True)

    def _open(self) -> UploadPackSession | None:
        # A session pays off over repeated polls only: the first one (all of 'agent once')
        # is a fetch.
        self._polls += 1
        if self._polls < 2 or self.unavailable is not None or time.monotonic() < self._retry_at:
            return None
        command = self._command()
        if command is None:
            return None
        try:
            self._session = open_session(command, self._open_within)
        except NoProtocolV2 as exc:
            self._give_up(str(exc))
        except (SessionLost, ProtocolViolation, OSError) as exc:
            self._failed(exc, None)
        return self._session

    def _give_up(self, why: str) -> None:
        self.unavailable = why
        log.info(
            "%s: no git protocol v2 session for polling (%s); each poll runs a git fetch "
            "instead (about 15-25 ms of CPU per poll; an sshd with 'AcceptEnv GIT_PROTOCOL' "
            "makes an idle poll nearly free)",
            self.shown,
            why,
            extra={"decision": "polling"},
        )

    def _failed(self, exc: Exception, session: UploadPackSession | None) -> None:
        self._session = None
        stderr = b""
        if session is not None:
            session.end(politely=False)
            stderr = bytes(session.stderr)
        said = printable(stderr.decode("utf-8", "replace").strip()[-300:])
        # A session a host or a dropped connection ends is routine; a broken or silent one not.
        level = logging.INFO if isinstance(exc, SessionEnded) and not stderr else logging.WARNING
        if process.winding_down():
            level = logging.DEBUG
        log.log(
            level,
            "%s: the ls-refs session for %s failed (%s%s); this poll fetches instead, a new "
            "session is tried in %.0f s",
            self.shown,
            self.ref,
            exc,
            f"; the host said: {said}" if said else "",
            self._pause,
            extra={"decision": "polling"},
        )
        self._retry_at = time.monotonic() + self._pause
        self._pause = min(MAX_RETRY_S, self._pause * 2)
