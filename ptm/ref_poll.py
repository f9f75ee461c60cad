"""The tasks branch's head asked with git protocol v2's ``ls-refs``, with no local process.

A poll that runs ``git fetch`` over the shared SSH connection starts a git process and an ssh
client each time (15-25 ms of CPU). Instead each poll opens a session on the agent's master
connection itself (ptm.ssh_mux), runs ``git-upload-pack '<path>'`` there (quoted as git
quotes it, so gitolite and git-shell see what they know), reads the greeting, sends one
``ls-refs`` for the branch and a flush, and reads the answer: only a head that moved is
fetched. The host's sshd must pass ``GIT_PROTOCOL`` on (``AcceptEnv GIT_PROTOCOL``); one that
answers in protocol v0 is recognised from its first line, and the agent then fetches at every
poll as before.

The host may be hostile: the whole exchange has one deadline, pkt-lines are parsed strictly
(four lowercase hex digits, 5 to 65520 bytes), an answer is capped in lines and bytes, an
object id is 40 lowercase hex digits. Anything else ends the session and that poll falls back
to a fetch, with a warning; the next ``ls-refs`` is tried after a pause that grows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ptm import process
from ptm.console import printable
from ptm.errors import PtmError
from ptm.ssh_mux import MuxRefused, MuxSession, NoMaster, open_session
from ptm.ssh_url import parse_ssh_url
from ptm.urls import redact_url

LARGE_PACKET_MAX = 65520  # git's limit for one pkt-line, its 4 length digits included
MAX_LINES = 1024  # per answer: ls-refs for one prefix names a handful of refs
MAX_ANSWER_BYTES = 256 * 1024
MAX_STDERR_BYTES = 2048  # what is kept of the server's messages, for a warning
ANSWER_DEADLINE_S = 10.0  # a whole poll: the host starts git-upload-pack, greets, answers
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
    """The session did not answer in time, ended before its answer, or took no request."""


class NoProtocolV2(PtmError):
    """The host answered in protocol v0/v1: its sshd does not pass GIT_PROTOCOL on."""


@dataclass(frozen=True)
class BranchHead:
    """What the registry's ``ls-refs`` said of one branch: its head, None when it has none."""

    oid: str | None


@dataclass(frozen=True)
class SessionCommand:
    """How to reach ``git-upload-pack``: the shared connection's control socket, the remote
    command (quoted as git quotes it) and the variables to pass (``NAME=value``)."""

    socket: Path
    remote: str
    env: tuple[str, ...]


def git_quoted(text: str) -> str:
    """``text`` in single quotes as git's sq_quote_buf writes it (``'`` and ``!`` escaped)."""
    return "'" + text.replace("'", "'\\''").replace("!", "'\\!'") + "'"


def upload_pack_command(path: str) -> str:
    """The remote command git sends over ssh for ``path`` (connect.c), so gitolite and
    git-shell see what they know."""
    return f"git-upload-pack {git_quoted(path)}"


def repository_path(url: str) -> str | None:
    """The repository path git sends for an SSH registry URL (None: not one ptm polls)."""
    parsed = parse_ssh_url(url)
    return None if parsed is None else parsed.path


def pkt_line(payload: bytes) -> bytes:
    return b"%04x" % (len(payload) + 4) + payload


def ls_refs_request(ref: str) -> bytes:
    prefix = pkt_line(b"ref-prefix " + ref.encode() + b"\n")
    return pkt_line(b"command=ls-refs\n") + DELIM + prefix + FLUSH


def split_packet(buffer: bytes | bytearray) -> tuple[bytes | None, int] | None:
    """The first pkt-line of ``buffer``: (payload without its newline, bytes used), with None
    for a flush (a line of just a newline is b"", not the end); None while ``buffer`` holds
    no whole one. Sizes are never trusted."""
    if len(buffer) < 4:
        return None
    head = bytes(buffer[:4])
    if not LENGTH.fullmatch(head):
        raise ProtocolViolation(f"a pkt-line length that is not 4 lowercase hex digits: {head!r}")
    size = int(head, 16)
    if size == 0:
        return None, 4
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


class UploadPackReader:
    """The host's side of one ``git-upload-pack`` session: strict, bounded pkt-line reads
    from its stdout within one deadline; what it says on stderr is kept for a warning."""

    def __init__(self, session: MuxSession, deadline: float, within: float) -> None:
        self._session = session
        self._deadline, self._within = deadline, within
        self._poller = select.poll()
        self._poller.register(session.stdout, select.POLLIN)
        self._poller.register(session.stderr, select.POLLIN)
        self._buffer = bytearray()
        self.stderr = bytearray()

    def head(self, ref: str) -> str | None:
        """Greeting, one ``ls-refs`` and a flush that ends the session: the head of ``ref``."""
        if protocol_of(self._packet() or b"") != 2:  # a flush first is no protocol either
            raise NoProtocolV2("the host answered in protocol v0 (its sshd drops GIT_PROTOCOL)")
        check_capabilities(self._lines())
        self._send(ls_refs_request(ref) + FLUSH)
        return head_in(self._lines(), ref)

    def said(self) -> str:
        """The host's last words on stderr, as one printable line."""
        with contextlib.suppress(OSError):
            for _ in range(4):  # a little more may be waiting; never more than the cap
                if not self._take(self._session.stderr):
                    break
        return printable(self.stderr.decode("utf-8", "replace").strip()[-300:])

    def _lines(self) -> list[bytes]:
        """The lines up to the next flush, within the deadline and the caps."""
        lines: list[bytes] = []
        total = 0
        while (payload := self._packet()) is not None:
            lines.append(payload)
            total += len(payload) + 5
            if len(lines) > MAX_LINES or total > MAX_ANSWER_BYTES:
                raise ProtocolViolation(
                    f"an answer of over {MAX_LINES} lines or {MAX_ANSWER_BYTES} bytes"
                )
        return lines

    def _packet(self) -> bytes | None:
        while (found := split_packet(self._buffer)) is None:
            self._fill()
        payload, used = found
        del self._buffer[:used]
        return payload

    def _send(self, data: bytes) -> None:
        """Write a request (far below a pipe's size: it never waits)."""
        try:
            written = os.write(self._session.stdin, data)
        except OSError as exc:
            raise SessionLost(f"the session takes no request ({exc})") from exc
        if written != len(data):
            raise SessionLost("the session takes no request (its input is full)")

    def _fill(self) -> None:
        """Wait for more of the answer until the deadline (SessionLost after it)."""
        while True:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise SessionLost(f"no answer within {self._within:g} s")
            if process.winding_down():
                raise SessionLost("the agent is stopping")
            events = self._poller.poll(1000 * min(remaining, READ_SLICE_S))
            if any(self._read(fd) for fd, _ in events):
                return

    def _read(self, fd: int) -> bool:
        """Take one chunk from ``fd``; True when the answer's buffer grew."""
        if fd == self._session.stderr:
            if not self._take(fd):
                self._poller.unregister(fd)
            return False
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise SessionLost(f"the session broke off ({exc})") from exc
        if not chunk:
            raise SessionLost("the session ended before its answer")
        self._buffer += chunk
        return True

    def _take(self, fd: int) -> bool:
        """One chunk of stderr into the capped tail; False at its end."""
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False  # its stderr is gone; the answer says the rest
        self.stderr = (self.stderr + chunk)[-MAX_STDERR_BYTES:]
        return bool(chunk)


class BranchPoll:
    """The head of one branch, asked in a new ``git-upload-pack`` session at each poll.

    Not one session kept open: git-upload-pack reads the refs once and keeps them for its
    lifetime (git's files backend caches loose refs), so a long-lived session would never see
    a push. ``head`` returns None whenever no answer can be had this time (no shared
    connection, a broken or silent host, v2 unavailable): the caller then fetches, as it would
    without. ``command`` says how to reach the host, or None while that is not possible."""

    def __init__(
        self,
        url: str,
        branch: str,
        command: Callable[[], SessionCommand | None],
        *,
        within: float = ANSWER_DEADLINE_S,
        retry_after: float = FIRST_RETRY_S,
    ) -> None:
        self.shown = redact_url(url)
        self.ref = f"refs/heads/{branch}"
        self._command = command
        self._within = within
        self._retry_at = 0.0
        self._first_pause = self._pause = retry_after
        self.unavailable: str | None = None  # why v2 is not used for good (None: it is)

    def head(self) -> BranchHead | None:
        """The branch's head as the registry says now; None: fetch instead this time."""
        if self.unavailable is not None or time.monotonic() < self._retry_at:
            return None
        command = self._command()
        if command is None:
            return None
        deadline = time.monotonic() + self._within
        try:
            session = open_session(command.socket, command.remote, command.env, deadline=deadline)
        except NoMaster:
            return None  # the fetch connects on its own meanwhile
        except MuxRefused as exc:
            self._failed(exc, "")
            return None
        try:
            return self._ask(UploadPackReader(session, deadline, self._within))
        finally:
            session.close()

    def _ask(self, reader: UploadPackReader) -> BranchHead | None:
        try:
            oid = reader.head(self.ref)
        except NoProtocolV2 as exc:
            self._give_up(str(exc))
            return None
        except (SessionLost, ProtocolViolation) as exc:
            self._failed(exc, reader.said())
            return None
        self._pause = self._first_pause
        return BranchHead(oid)

    def _give_up(self, why: str) -> None:
        self.unavailable = why
        log.info(
            "%s: no git protocol v2 for polling (%s); each poll runs a git fetch instead "
            "(about 15-25 ms of CPU per poll; an sshd with 'AcceptEnv GIT_PROTOCOL' makes an "
            "idle poll nearly free)",
            self.shown,
            why,
            extra={"decision": "polling"},
        )

    def _failed(self, exc: Exception, said: str) -> None:
        level = logging.DEBUG if process.winding_down() else logging.WARNING
        log.log(
            level,
            "%s: the ls-refs poll of %s failed (%s%s); this poll fetches instead, the next "
            "ls-refs is tried in %.3g s",
            self.shown,
            self.ref,
            exc,
            f"; the host said: {said}" if said else "",
            self._pause,
            extra={"decision": "polling"},
        )
        self._retry_at = time.monotonic() + self._pause
        self._pause = min(MAX_RETRY_S, self._pause * 2)
