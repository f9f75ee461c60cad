"""Does the registry host let this site write ``results/<site>``? Asked without changing it.

``git push --dry-run`` cannot tell: it never sends a ref update, so the host's per-branch rules
(gitolite's update hook, a forge's branch protection in pre-receive) never run. A real push of
a throwaway ref writes. So ptm speaks git's receive-pack protocol itself and asks the host to
update ``refs/heads/results/<site>`` from its current commit to that same commit, atomically:
every server-side check runs as for a real push (gitolite's ``W`` rule on that ref, hooks),
and the ref, its reflog and the object store stay as they were (no objects are sent; git does
not rewrite a ref that already has the value). git's own client never sends such a no-op, so
``ptm agent check`` does it here. Transports: a local path or ``file://``, ``ssh://`` and
``user@host:path`` (through the same ssh command git would use), ``http(s)://`` smart HTTP
(credentials only from the URL). A branch that does not exist yet cannot be probed this way
without creating it; the check says so instead of guessing.

``is_permission_denied`` tells a push the host refused for permissions (retrying cannot help)
from a transient failure.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import struct
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ptm.errors import RegistryError
from ptm.urls import redact_text, redact_url

ZERO = "0" * 40
PROBE_TIMEOUT = 60.0

_DENIED_MARKERS = (
    "denied by",  # gitolite: "FATAL: W refs/heads/x site DENIED by fallthru"
    "permission denied",  # ssh "(publickey)", a local repository's file modes
    "permission to ",  # GitHub: "Permission to org/repo.git denied to user"
    "not allowed to push",  # GitLab
    "not allowed to force push",
    "protected branch",  # GitLab, Gitea
    "user permission denied",  # Gitea
    "insufficient permission",  # git on a shared repository folder
    "hook declined",  # the host's own hook said no to this ref
    "requested url returned error: 401",
    "requested url returned error: 403",
    "access denied",
    "unauthorized",
)


def is_permission_denied(message: str) -> bool:
    """True when git's output says the host refused for permissions, so a retry would fail
    the same way until an admin changes the rules or the key (a permanent error)."""
    text = message.lower()
    return any(marker in text for marker in _DENIED_MARKERS)


class PushDenied(RegistryError):
    """The host refused the (no-op) update of the site's results branch."""


@dataclass(frozen=True)
class PushProbe:
    """What the host said to a no-op update of ``ref``."""

    ref: str
    commit: str | None  # the ref's current commit; None when the branch does not exist yet
    accepted: bool | None  # None: not asked (the branch does not exist yet)
    detail: str


# ---- the protocol (pure) -------------------------------------------------------------------


def pkt_line(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


def empty_pack() -> bytes:
    header = b"PACK" + struct.pack(">II", 2, 0)
    return header + hashlib.sha1(header).digest()


def read_pkt_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """pkt-line payloads up to the next flush packet (or the end of the stream)."""
    while True:
        head = stream.read(4)
        if len(head) < 4:
            return
        size = int(head, 16)
        if size == 0:
            return
        yield stream.read(size - 4)


def parse_advertisement(lines: list[bytes]) -> tuple[dict[str, str], set[str]]:
    """(ref → commit, capabilities) from receive-pack's first message."""
    refs: dict[str, str] = {}
    capabilities: set[str] = set()
    for index, raw in enumerate(lines):
        line = raw.rstrip(b"\n")
        if index == 0:
            line, _, caps = line.partition(b"\0")
            capabilities = set(caps.decode("ascii", "replace").split())
        sha, _, name = line.decode("utf-8", "replace").partition(" ")
        if name and sha != ZERO:
            refs[name] = sha
    return refs, capabilities


def noop_update_request(ref: str, commit: str, capabilities: set[str]) -> bytes:
    wanted = [c for c in ("report-status", "atomic") if c in capabilities]
    command = f"{commit} {commit} {ref}\0{' '.join(wanted)}".encode()
    return pkt_line(command) + b"0000" + empty_pack()


def parse_report(data: bytes) -> dict[str, str]:
    """ref → "ok" or the host's reason, from report-status; "unpack" → its status."""
    report: dict[str, str] = {}
    position = 0
    while position + 4 <= len(data):
        size = int(data[position : position + 4], 16)
        if size == 0:
            position += 4
            continue
        line = data[position + 4 : position + size].decode("utf-8", "replace").rstrip("\n")
        position += size
        kind, _, rest = line.partition(" ")
        if kind == "unpack":
            report["unpack"] = rest
        elif kind == "ok":
            report[rest] = "ok"
        elif kind == "ng":
            ref, _, reason = rest.partition(" ")
            report[ref] = reason or "rejected"
    return report


# ---- transports ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SshAddress:
    user_host: str
    port: str | None
    path: str


def ssh_address(url: str) -> SshAddress | None:
    if url.startswith("ssh://"):
        parts = urllib.parse.urlsplit(url)
        user = f"{parts.username}@" if parts.username else ""
        port = str(parts.port) if parts.port else None
        return SshAddress(f"{user}{parts.hostname}", port, parts.path)
    head, colon, path = url.partition(":")
    if colon and "/" not in head and "://" not in url:
        return SshAddress(head, None, path)
    return None


def local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    return Path(url) if url.startswith("/") else None


def receive_pack_command(url: str, environ: Mapping[str, str]) -> list[str]:
    """The command that talks receive-pack for ``url`` over stdin/stdout, as git would run it."""
    local = local_path(url)
    if local is not None:
        return ["git", "receive-pack", str(local)]
    address = ssh_address(url)
    if address is None:
        raise RegistryError(f"{redact_url(url)}: no transport for a push check")
    ssh = environ.get("GIT_SSH_COMMAND") or "ssh"
    port = ["-p", address.port] if address.port else []
    remote = f"git-receive-pack {shlex.quote(address.path)}"
    # git runs GIT_SSH_COMMAND through the shell with its arguments appended; so does ptm.
    return ["sh", "-c", f'{ssh} "$@"', "ssh", *port, address.user_host, remote]


def probe_stream(
    command: list[str], ref: str, environ: Mapping[str, str], timeout: float
) -> PushProbe:
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        assert process.stdin is not None and process.stdout is not None
        refs, capabilities = parse_advertisement(list(read_pkt_lines(process.stdout)))
        commit = refs.get(ref)
        with suppress(BrokenPipeError):  # a host that hung up says why on stderr
            if commit is not None:
                process.stdin.write(noop_update_request(ref, commit, capabilities))
            process.stdin.close()
        report = parse_report(process.stdout.read())
        stderr = process.stderr.read().decode("utf-8", "replace") if process.stderr else ""
        process.wait()
    finally:
        timer.cancel()
    return judge_probe(ref, refs, commit, report, stderr, process.returncode)


def judge_probe(
    ref: str,
    refs: Mapping[str, str],
    commit: str | None,
    report: Mapping[str, str],
    stderr: str,
    returncode: int,
) -> PushProbe:
    said = redact_text(" ".join(line.strip() for line in stderr.splitlines() if line.strip()))
    if not refs and commit is None and returncode != 0:
        message = said or f"receive-pack exited {returncode}"
        if is_permission_denied(message):
            raise PushDenied(f"the host refused to let this site push: {message}")
        raise RegistryError(f"could not talk to the registry's receive-pack: {message}")
    if commit is None:
        detail = f"{ref} does not exist yet; the first push creates it (not checked)"
        return PushProbe(ref, None, None, detail)
    verdict = report.get(ref)
    if verdict == "ok":
        return PushProbe(ref, commit, True, f"the host accepts updates of {ref} (not changed)")
    reason = verdict or "no answer to the update"
    detail = f"the host refuses updates of {ref}: {reason}" + (f" ({said})" if said else "")
    return PushProbe(ref, commit, False, detail)


def probe_http(url: str, ref: str, timeout: float) -> PushProbe:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    headers = {"User-Agent": "git/ptm-check"}
    if parts.username:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        info = _http(f"{base}/info/refs?service=git-receive-pack", None, headers, timeout)
        lines = _pkt_lines_of(info)
        refs, capabilities = parse_advertisement([x for x in lines if not x.startswith(b"# ")])
        commit = refs.get(ref)
        report: dict[str, str] = {}
        if commit is not None:
            post = {**headers, "Content-Type": "application/x-git-receive-pack-request"}
            body = noop_update_request(ref, commit, capabilities)
            report = parse_report(_http(f"{base}/git-receive-pack", body, post, timeout))
    except urllib.error.HTTPError as exc:
        message = f"the requested URL returned error: {exc.code}"
        if is_permission_denied(message):
            raise PushDenied(f"the host refused to let this site push: {message}") from exc
        raise RegistryError(f"{redact_url(url)}: {message}") from exc
    except OSError as exc:
        raise RegistryError(f"{redact_url(url)}: {exc}") from exc
    return judge_probe(ref, refs, commit, report, "", 0)


def _http(url: str, body: bytes | None, headers: Mapping[str, str], timeout: float) -> bytes:
    request = urllib.request.Request(url, data=body, headers=dict(headers))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data: bytes = response.read()
        return data


def _pkt_lines_of(data: bytes) -> list[bytes]:
    lines, position = [], 0
    while position + 4 <= len(data):
        size = int(data[position : position + 4], 16)
        position += 4
        if size:
            lines.append(data[position : position + size - 4])
            position += size - 4
    return lines


def probe_push_access(
    url: str, site: str, environ: Mapping[str, str], *, timeout: float = PROBE_TIMEOUT
) -> PushProbe:
    """Ask the host whether this site may update ``results/<site>``; change nothing."""
    ref = f"refs/heads/results/{site}"
    if re.match(r"https?://", url):
        return probe_http(url, ref, timeout)
    return probe_stream(receive_pack_command(url, environ), ref, environ, timeout)
