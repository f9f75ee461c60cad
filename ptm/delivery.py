"""Delivery of a run's files straight to a trusted third party over SFTP (the client side).

Only this module and the SFTP service's (``ptm.sftp_*``, ``ptm.ssh_keys``) use paramiko; every
paramiko, socket and file-system exception is translated here into ``DeliveryError`` naming the
target's ``host:port`` and the file, so nothing above this boundary imports paramiko.

Trust is explicit: the server's host key must equal the target's ``host_key`` line exactly
(no known_hosts file, no trust on first use), and only key types that line names are offered
during the key exchange. Each file goes to a temporary name in its folder, its remote size is
checked, and only then is it renamed into place, so a reader at the third party never sees a
half-written file under its final name. Key material is never logged or put into messages.

A target that is briefly unreachable (connection refused or reset, a timeout, a connection that
breaks off) is tried again, with pauses growing from RETRY_FIRST_PAUSE to RETRY_MAX_PAUSE, until
the caller's deadline; every other failure (host key, login, a refused write, a local file) is
permanent and raised at once. A retry sends every file again: they replace what an earlier
attempt may have put in place.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ptm.errors import DeliveryError
from ptm.names import is_valid_name
from ptm.siteconfig import SftpTarget
from ptm.ssh_keys import HOST_KEY_ALGORITHMS, PublicKey

CONNECT_TIMEOUT = 15.0  # seconds for TCP connect, SSH banner, key exchange and login
IO_TIMEOUT = 60.0  # seconds without an answer to one SFTP request
CHUNK_BYTES = 256 * 1024
HANG_UP_SECONDS = 2.0  # waiting for the server to close the session
PART_PREFIX = ".ptm-part-"  # temporary upload names start with this
DEFAULT_RETRY_SECONDS = 180.0  # how long an unreachable target is retried without a deadline
RETRY_FIRST_PAUSE = 0.5
RETRY_MAX_PAUSE = 15.0

_UNREACHABLE_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
    }
)
# paramiko says "the connection went away" only in words
_UNREACHABLE_MESSAGES = (
    "Error reading SSH protocol banner",
    "Server connection dropped",
    "No existing session",
    "Socket is closed",
    "Authentication failed: transport shut down or saw EOF",
    "Authentication timeout",
)

log = logging.getLogger("ptm.delivery")


@dataclass(frozen=True)
class DeliveredFile:
    """One delivered file; the fields match a ``status.yaml`` ``outputs`` entry."""

    path: str  # relative to the delivered folder, "/"-separated
    bytes: int
    sha256: str


@dataclass(frozen=True)
class DeliveryReceipt:
    target: str
    host: str
    port: int
    remote_dir: str  # where the files went, as the server's account sees it
    files: tuple[DeliveredFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(delivered.bytes for delivered in self.files)


class TargetUnreachable(DeliveryError):
    """The target could not be reached, or the connection broke off: worth trying again."""


def deliver_files(
    target: SftpTarget, files: Path, remote_subdir: str, *, deadline: float | None = None
) -> DeliveryReceipt:
    """Upload every regular file below ``files`` to ``target.path/remote_subdir/…``.

    ``remote_subdir`` is made of names (``<task>/<site>``). Symlinks and special files below
    ``files`` are refused before anything is sent. An unreachable target is retried until
    ``deadline`` (a ``time.monotonic()`` value; default DEFAULT_RETRY_SECONDS from now); an
    attempt under way at the deadline is finished. Raises DeliveryError on any failure.
    """
    remote_dir = _remote_dir(target, remote_subdir)
    relative_paths = local_files(files)
    expected = _expected_host_key(target)
    client_key = _load_client_key(target)
    started = time.monotonic()
    give_up = started + DEFAULT_RETRY_SECONDS if deadline is None else deadline
    pause, attempt = RETRY_FIRST_PAUSE, 1
    while True:
        try:
            with _session(target, expected, client_key) as sftp:
                delivered = _send_all(sftp, target, files, relative_paths, remote_dir)
            return DeliveryReceipt(target.name, target.host, target.port, remote_dir, delivered)
        except TargetUnreachable as exc:
            left = give_up - time.monotonic()
            if left <= 0:
                spent = time.monotonic() - started
                gave_up = f"gave up after {attempt} attempts in {spent:.0f} s"
                raise TargetUnreachable(f"{exc} ({gave_up})") from exc
            log.warning("%s; trying again in %.1f s", exc, min(pause, left))
            time.sleep(min(pause, left))
            pause, attempt = min(pause * 2, RETRY_MAX_PAUSE), attempt + 1


def _send_all(
    sftp: paramiko.SFTPClient,
    target: SftpTarget,
    files: Path,
    relative_paths: tuple[str, ...],
    remote_dir: str,
) -> tuple[DeliveredFile, ...]:
    _make_folders(sftp, target, remote_dir, relative_paths)
    return tuple(_upload(sftp, target, files, path, remote_dir) for path in relative_paths)


def local_files(folder: Path) -> tuple[str, ...]:
    """Relative paths of the regular files below ``folder``, sorted; DeliveryError on others."""
    found: list[str] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            entries = list(os.scandir(folder / relative))
        except OSError as exc:
            raise DeliveryError(f"{folder / relative}: cannot list: {exc.strerror}") from exc
        for entry in entries:
            name = posixpath.join(relative, entry.name) if relative else entry.name
            if entry.is_dir(follow_symlinks=False):
                pending.append(name)
            elif entry.is_file(follow_symlinks=False):
                found.append(name)
            else:
                message = "is not a regular file or folder; only regular files are delivered"
                raise DeliveryError(f"{folder / name}: {message}")
    return tuple(sorted(found))


def _remote_dir(target: SftpTarget, remote_subdir: str) -> str:
    parts = remote_subdir.split("/")
    if not all(is_valid_name(part) for part in parts):
        raise DeliveryError(f"{remote_subdir!r}: a delivery folder must be made of valid names")
    return posixpath.join(target.path, *parts)


def _expected_host_key(target: SftpTarget) -> PublicKey:
    try:
        return PublicKey.parse(target.host_key)
    except ValueError as exc:
        raise DeliveryError(_describe(target, "reading its host_key", str(exc))) from exc


def _load_client_key(target: SftpTarget) -> paramiko.PKey:
    doing = f"reading key file {target.key}"
    try:
        return paramiko.PKey.from_path(target.key)
    # without a password given, cryptography raises TypeError only for an encrypted key
    except (paramiko.PasswordRequiredException, TypeError) as exc:
        message = "the key needs a passphrase; use a key without one"
        raise DeliveryError(_describe(target, doing, message)) from exc
    except OSError as exc:
        raise DeliveryError(_describe(target, doing, str(exc.strerror or exc))) from exc
    except (paramiko.SSHException, ValueError) as exc:
        message = "not a private key ptm can read (OpenSSH ed25519, ECDSA or RSA)"
        raise DeliveryError(_describe(target, doing, message)) from exc


@contextmanager
def _translated(target: SftpTarget, doing: str) -> Iterator[None]:
    """Turn paramiko, socket and OS errors into DeliveryError naming host:port and the step."""
    try:
        yield
    except (paramiko.SSHException, OSError, EOFError) as exc:
        reason = _reason(exc)
        if _unreachable(exc):
            raise TargetUnreachable(_describe(target, doing, reason)) from exc
        if isinstance(exc, paramiko.AuthenticationException):
            reason = f"the server refused user {target.user!r} with key {target.key}"
        raise DeliveryError(_describe(target, doing, reason)) from exc


def _reason(exc: BaseException) -> str:
    if str(exc):
        return str(exc)
    return "the server closed the connection" if isinstance(exc, EOFError) else type(exc).__name__


def _unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the server could not be reached or the connection broke off."""
    if isinstance(exc, socket.gaierror):
        return exc.errno == socket.EAI_AGAIN  # a name server that did not answer, this time
    if isinstance(exc, (EOFError, TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS:
        return True
    return isinstance(exc, (OSError, paramiko.SSHException)) and str(exc).startswith(
        _UNREACHABLE_MESSAGES
    )


def _describe(target: SftpTarget, doing: str, reason: str) -> str:
    return f"SFTP target {target.name!r} ({target.host}:{target.port}): {doing}: {reason}"


@contextmanager
def _session(
    target: SftpTarget, expected: PublicKey, client_key: paramiko.PKey
) -> Iterator[paramiko.SFTPClient]:
    transport = _connect(target, expected, client_key)
    try:
        with _translated(target, "opening the SFTP session"):
            sftp = paramiko.SFTPClient.from_transport(transport)
            if sftp is None:
                raise paramiko.SSHException("the server refused the sftp subsystem")
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(IO_TIMEOUT)
        try:
            yield sftp
        finally:
            _hang_up(sftp)
    except DeliveryError as exc:
        # however paramiko words it (a closed descriptor, say), a connection gone is an outage
        if isinstance(exc, TargetUnreachable) or transport.is_active():
            raise
        raise TargetUnreachable(f"{exc} (the connection broke off)") from exc
    finally:
        transport.close()


def _hang_up(sftp: paramiko.SFTPClient) -> None:
    """End the session the way the server expects, so it sees a clean end, not a reset."""
    channel = sftp.get_channel()
    if channel is not None and not channel.closed:
        with suppress(OSError, paramiko.SSHException, EOFError):
            channel.shutdown_write()  # the server's SFTP loop ends and closes the channel
            deadline = time.monotonic() + HANG_UP_SECONDS
            while not channel.closed and time.monotonic() < deadline:
                time.sleep(0.01)
    # the error that broke the session, if any, is the one to report, not this close's
    with suppress(OSError, paramiko.SSHException, EOFError):
        sftp.close()


def _connect(
    target: SftpTarget, expected: PublicKey, client_key: paramiko.PKey
) -> paramiko.Transport:
    with _translated(target, "connecting"):
        sock = socket.create_connection((target.host, target.port), timeout=CONNECT_TIMEOUT)
    try:
        transport = paramiko.Transport(sock)
    except BaseException:
        sock.close()
        raise
    try:
        transport.banner_timeout = CONNECT_TIMEOUT
        transport.handshake_timeout = CONNECT_TIMEOUT
        transport.auth_timeout = CONNECT_TIMEOUT
        transport.get_security_options().key_types = HOST_KEY_ALGORITHMS[expected.key_type]
        with _translated(target, f"key exchange (expecting a {expected.key_type} host key)"):
            transport.start_client(timeout=CONNECT_TIMEOUT)
        _check_host_key(target, expected, transport.get_remote_server_key())
        with _translated(target, "logging in"):
            transport.auth_publickey(target.user, client_key)
            if not transport.is_authenticated():
                raise paramiko.AuthenticationException("more authentication required")
    except BaseException:
        transport.close()
        raise
    return transport


def _check_host_key(target: SftpTarget, expected: PublicKey, presented: paramiko.PKey) -> None:
    if expected.matches(presented):
        return
    found = PublicKey.of(presented)
    message = (
        f"the server's host key ({found.key_type} {found.fingerprint}) is not the host_key "
        f"configured for this target ({expected.fingerprint}); refusing to connect"
    )
    raise DeliveryError(_describe(target, "checking the host key", message))


def _make_folders(
    sftp: paramiko.SFTPClient, target: SftpTarget, remote_dir: str, relative_paths: tuple[str, ...]
) -> None:
    wanted = {remote_dir}
    wanted.update(posixpath.join(remote_dir, posixpath.dirname(p)) for p in relative_paths)
    made: set[str] = set()
    for folder in sorted(wanted):
        for step in _folder_steps(folder):
            if step not in made:
                _make_folder(sftp, target, step)
                made.add(step)


def _folder_steps(folder: str) -> list[str]:
    """``/a/./b/`` → ``["/a", "/a/b"]``; ``a/b`` → ``["a", "a/b"]``."""
    prefix = "/" if folder.startswith("/") else ""
    parts = [part for part in folder.split("/") if part not in ("", ".")]
    return [prefix + "/".join(parts[: index + 1]) for index in range(len(parts))]


def _make_folder(sftp: paramiko.SFTPClient, target: SftpTarget, folder: str) -> None:
    with _translated(target, f"creating folder {folder}"):
        mode = _mode(sftp, folder)
        if mode is None:
            try:
                sftp.mkdir(folder)
                return
            except OSError:  # another delivery may have made it meanwhile
                mode = _mode(sftp, folder)
                if mode is None:
                    raise
        if not stat.S_ISDIR(mode):
            raise NotADirectoryError(f"{folder} exists and is not a folder")


def _mode(sftp: paramiko.SFTPClient, path: str) -> int | None:
    """The mode of ``path`` (never following a symlink on ptm's server), None when missing."""
    try:
        return sftp.stat(path).st_mode or 0
    except FileNotFoundError:
        return None


def _upload(
    sftp: paramiko.SFTPClient, target: SftpTarget, files: Path, relative: str, remote_dir: str
) -> DeliveredFile:
    local, remote = files / relative, posixpath.join(remote_dir, relative)
    partial = posixpath.join(posixpath.dirname(remote), PART_PREFIX + secrets.token_hex(8))
    try:
        with _translated(target, f"uploading {local} to {remote}"):
            size, sha256 = _send_explained(sftp, local, partial)
            remote_size = sftp.stat(partial).st_size
            if remote_size != size:
                raise OSError(f"the server holds {remote_size} bytes, {size} were sent")
            sftp.posix_rename(partial, remote)
    except BaseException:
        _remove_quietly(sftp, partial)
        raise
    return DeliveredFile(relative, size, sha256)


def _send_explained(sftp: paramiko.SFTPClient, local: Path, remote: str) -> tuple[int, str]:
    try:
        return _send(sftp, local, remote)
    except OSError as exc:
        if exc.errno is not None or _unreachable(exc):
            raise
        # SFTP has no status for "too big" or "over quota": servers answer a plain "Failure"
        reason = "the server refused the data (a file size limit or quota, or a full disk?)"
        raise OSError(f"{exc}: {reason}") from exc


def _send(sftp: paramiko.SFTPClient, local: Path, remote: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    descriptor = os.open(local, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as source, sftp.open(remote, "wb") as sink:
        sink.set_pipelined(True)
        chunk = source.read(CHUNK_BYTES)
        while chunk:
            following = source.read(CHUNK_BYTES)
            if not following:
                # paramiko drops the server's answers to pipelined writes; the last write, not
                # pipelined, waits for every earlier answer and raises the first refusal
                sink.set_pipelined(False)
            sink.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            chunk = following
    return size, digest.hexdigest()


def _remove_quietly(sftp: paramiko.SFTPClient, remote: str) -> None:
    # the upload already failed; that error is the one worth reporting
    with suppress(OSError, paramiko.SSHException, EOFError):
        sftp.remove(remote)


def check_target(target: SftpTarget) -> str:
    """For ``ptm agent check``: connect, verify the host key, log in and look at the target's
    folder, writing nothing. Raises DeliveryError naming the step that failed."""
    expected = _expected_host_key(target)
    with (
        _session(target, expected, _load_client_key(target)) as sftp,
        _translated(target, f"looking at folder {target.path!r}"),
    ):
        try:
            sftp.stat(target.path)
            folder = "there"
        except FileNotFoundError:
            folder = "not there yet (the first delivery makes it)"
    return (
        f"{target.user}@{target.host}:{target.port}: host key {expected.fingerprint} matches, "
        f"logged in, folder {target.path!r} {folder}"
    )
