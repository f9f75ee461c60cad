"""The trusted third party's SFTP service (``ptm sftp serve``): the SSH and SFTP server.

Its config and host key are in ``sftp_config``, the jail and quota in ``sftp_jail``.

Sites log in with their account's public key only. Each account is jailed to ``root/<account>/``
(see ``sftp_jail``); symlinks are never followed, created or read. Clients may create folders,
write, rename, remove, list and stat their own files. ``max_file_bytes`` and the account's
``quota_bytes`` (counting what the folder already held at start) are enforced on every write: a
write beyond either fails and stores nothing, and the upload it belongs to is removed.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import posixpath
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, ParamSpec, TypeVar

import paramiko

from ptm.errors import ConfigError, DeliveryError
from ptm.sftp_config import SftpAccount, SftpServiceConfig, load_or_create_host_key
from ptm.sftp_jail import (
    AccountSession,
    Jail,
    OpenFile,
    QuotaRefused,
    Usage,
    remove_file,
    rename_file,
    stored_bytes,
)
from ptm.ssh_keys import PublicKey

LOGIN_GRACE = 30.0  # seconds a connection may take to log in
ACCEPT_POLL = 0.5  # seconds between checks for stop() while waiting for connections
MAX_CONNECTIONS = 64  # at once, over all accounts; more are closed at once

log = logging.getLogger("ptm.sftp")
_P = ParamSpec("_P")
_R = TypeVar("_R")


# -- SFTP ---------------------------------------------------------------------------------------


def _sftp_code(exc: OSError) -> int:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return paramiko.sftp.SFTP_NO_SUCH_FILE
    if exc.errno in (errno.EACCES, errno.EPERM, errno.ELOOP):
        return paramiko.sftp.SFTP_PERMISSION_DENIED
    return paramiko.sftp.SFTP_FAILURE


def _answering_errors(method: Callable[_P, _R]) -> Callable[_P, _R | int]:
    """OSError from ``method`` becomes the SFTP status code the client receives."""

    @functools.wraps(method)
    def answer(*args: _P.args, **kwargs: _P.kwargs) -> _R | int:
        try:
            return method(*args, **kwargs)
        except OSError as exc:
            log.debug("refused %s: %s", method.__name__, exc)
            return _sftp_code(exc)

    return answer


class JailedFile(paramiko.SFTPHandle):
    """An open file of one account; the quota and size limit are kept by ``OpenFile``."""

    def __init__(self, opened: OpenFile, ended: threading.Event) -> None:
        super().__init__()
        self.opened = opened
        self.ended = ended  # set when the session ends: a file still open then was not finished

    @_answering_errors
    def read(self, offset: int, length: int) -> bytes:
        return self.opened.read(offset, length)

    @_answering_errors
    def write(self, offset: int, data: Any) -> int:  # ReadableBuffer in the stubs
        try:
            self.opened.write(offset, memoryview(data))
        except QuotaRefused as exc:
            log.warning("account %s: %s", self.opened.session.account, exc.strerror)
            return paramiko.sftp.SFTP_FAILURE
        return paramiko.sftp.SFTP_OK

    @_answering_errors
    def stat(self) -> paramiko.SFTPAttributes:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.opened.descriptor))

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        return paramiko.sftp.SFTP_OP_UNSUPPORTED

    def close(self) -> None:
        # paramiko closes the files left open when a session ends and ignores what they raise
        opened = self.opened
        try:
            if opened.close(finished=not self.ended.is_set()):
                log.warning(
                    "account %s: removed the unfinished upload %s",
                    opened.session.account,
                    opened.path,
                )
        except OSError as exc:
            log.error("account %s: closing %s: %s", opened.session.account, opened.path, exc)


class JailedSftp(paramiko.SFTPServerInterface):
    """SFTP requests of one logged-in account, answered inside its jail."""

    def __init__(self, server: paramiko.ServerInterface, *args: Any, **kwargs: Any) -> None:
        super().__init__(server)
        if not isinstance(server, Gate):
            raise TypeError("JailedSftp serves sessions that passed a Gate")
        self.session = server.account_session()
        self.jail = self.session.jail
        self.ended = threading.Event()

    def session_ended(self) -> None:
        self.ended.set()  # paramiko calls this first, then closes the files still open

    @_answering_errors
    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> paramiko.SFTPHandle:
        flags = (flags & ~os.O_APPEND) | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        return JailedFile(OpenFile(self.session, path, flags), self.ended)

    @_answering_errors
    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes]:
        with self.jail.opened_folder(path) as folder, os.scandir(folder) as entries:
            return [
                paramiko.SFTPAttributes.from_stat(entry.stat(follow_symlinks=False), entry.name)
                for entry in entries
            ]

    @_answering_errors
    def stat(self, path: str) -> paramiko.SFTPAttributes:
        with self.jail.folder_of(path) as (folder, name):  # lstat: links are never followed
            info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        return paramiko.SFTPAttributes.from_stat(info, posixpath.basename(path))

    def lstat(self, path: str) -> paramiko.SFTPAttributes | int:
        return self.stat(path)

    @_answering_errors
    def remove(self, path: str) -> int:
        remove_file(self.session, path)
        return paramiko.sftp.SFTP_OK

    def rename(self, oldpath: str, newpath: str) -> int:
        return self._rename(oldpath, newpath, replace=False)

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        return self._rename(oldpath, newpath, replace=True)

    @_answering_errors
    def _rename(self, oldpath: str, newpath: str, *, replace: bool) -> int:
        rename_file(self.session, oldpath, newpath, replace=replace)
        log.info("account %s: stored %s", self.session.account, self.canonicalize(newpath))
        return paramiko.sftp.SFTP_OK

    @_answering_errors
    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        with self.jail.folder_of(path) as (folder, name):
            os.mkdir(name, 0o700, dir_fd=folder)
        return paramiko.sftp.SFTP_OK

    @_answering_errors
    def rmdir(self, path: str) -> int:
        with self.jail.folder_of(path) as (folder, name):
            os.rmdir(name, dir_fd=folder)
        return paramiko.sftp.SFTP_OK

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return paramiko.sftp.SFTP_OP_UNSUPPORTED

    def canonicalize(self, path: str) -> str:
        """The path as the account sees it; lexical only (``..`` cannot climb above ``/``)."""
        names = [name for name in posixpath.normpath("/" + path).split("/") if name]
        return "/" + "/".join(names)

    def readlink(self, path: str) -> str | int:
        return paramiko.sftp.SFTP_OP_UNSUPPORTED

    def symlink(self, target_path: str, path: str) -> int:
        return paramiko.sftp.SFTP_OP_UNSUPPORTED


class Gate(paramiko.ServerInterface):
    """One connection's SSH decisions: public-key login per account, sftp sessions only."""

    def __init__(
        self,
        sessions: Mapping[str, AccountSession],
        accounts: Mapping[str, SftpAccount],
        transport: paramiko.Transport,
        peer: str,
    ) -> None:
        self.sessions = sessions
        self.accounts = accounts
        self.transport = transport
        self.peer = peer

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        account = self.accounts.get(username)
        if account is not None and account.public_key.matches(key):
            return paramiko.common.AUTH_SUCCESSFUL  # paramiko then checks the signature
        log.warning(
            "refused key %s for user %r from %s", PublicKey.of(key).fingerprint, username, self.peer
        )
        return paramiko.common.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.common.OPEN_SUCCEEDED
        return paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        return name == "sftp" and super().check_channel_subsystem_request(channel, name)

    def account_session(self) -> AccountSession:
        username = self.transport.get_username()
        if not self.transport.is_authenticated() or username is None:
            raise PermissionError(errno.EACCES, "not logged in")
        if username not in self.sessions:
            raise PermissionError(errno.EACCES, "not logged in")
        log.info("account %s logged in from %s", username, self.peer)
        return self.sessions[username]


# -- the service --------------------------------------------------------------------------------


class SftpService:
    """``SftpService(config).start()`` returns the bound port; ``stop()`` ends every session."""

    def __init__(self, config: SftpServiceConfig) -> None:
        self.config = config
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._transports: set[paramiko.Transport] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._host_key: paramiko.PKey | None = None
        self._sessions: dict[str, AccountSession] = {}

    @property
    def host_key(self) -> PublicKey:
        """The public host key, for sites' ``sftp_targets.<name>.host_key``."""
        if self._host_key is None:
            raise RuntimeError("the service has not started")
        return PublicKey.of(self._host_key)

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the service has not started")
        return int(self._listener.getsockname()[1])

    def start(self) -> int:
        self._host_key = load_or_create_host_key(self.config.host_key)
        self._sessions = self._prepare_accounts()
        self._listener = _listen(self.config.host, self.config.port)
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="ptm-sftp-accept", daemon=True
        )
        self._acceptor.start()
        port = self.port
        listen = replace(self.config, port=port).listen
        # the command prints this for the admin; the log line is for debugging embedders
        log.debug("listening on %s (host key %s)", listen, self.host_key.fingerprint)
        return port

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            transports, threads = list(self._transports), list(self._threads)
        for transport in transports:
            transport.close()
        for thread in threads:
            thread.join(timeout=10)

    def __enter__(self) -> SftpService:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._acceptor is not None and self._acceptor.is_alive()

    def _prepare_accounts(self) -> dict[str, AccountSession]:
        root = self.config.root
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            sessions = {}
            for name, account in self.config.accounts.items():
                folder = root / name
                folder.mkdir(mode=0o700, exist_ok=True)
                usage = Usage(account.quota_bytes, stored_bytes(folder))
                sessions[name] = AccountSession(
                    name, Jail(folder), usage, self.config.max_file_bytes
                )
        except OSError as exc:
            raise ConfigError(f"{root}: cannot prepare the account folders: {exc}") from exc
        return sessions

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                connection, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:  # out of descriptors, for example: keep serving the others
                log.error("cannot accept a connection: %s", exc)
                time.sleep(ACCEPT_POLL)
                continue
            self._spawn(connection, f"{address[0]}:{address[1]}")

    def _spawn(self, connection: socket.socket, peer: str) -> None:
        thread = threading.Thread(
            target=self._serve, args=(connection, peer), name=f"ptm-sftp {peer}", daemon=True
        )
        with self._lock:
            full = len(self._threads) >= MAX_CONNECTIONS
            if not full:
                self._threads.add(thread)
        if full:
            log.warning("refused a connection from %s: %d already open", peer, MAX_CONNECTIONS)
            connection.close()
            return
        thread.start()

    def _serve(self, connection: socket.socket, peer: str) -> None:
        transport: paramiko.Transport | None = None
        try:
            transport = paramiko.Transport(connection)
            with self._lock:
                self._transports.add(transport)
            assert self._host_key is not None
            transport.add_server_key(self._host_key)
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, JailedSftp)
            gate = Gate(self._sessions, self.config.accounts, transport, peer)
            transport.start_server(server=gate)
            self._watch(transport)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.info("connection from %s ended: %s", peer, exc)
        finally:
            if transport is None:
                connection.close()
            else:
                transport.close()
            with self._lock:
                self._transports.discard(transport)
                self._threads.discard(threading.current_thread())

    def _watch(self, transport: paramiko.Transport) -> None:
        deadline = time.monotonic() + LOGIN_GRACE
        channels = []  # held: paramiko closes a channel once nothing refers to it
        while transport.is_active() and not self._stopping.is_set():
            if not transport.is_authenticated() and time.monotonic() > deadline:
                return
            channel = transport.accept(timeout=ACCEPT_POLL)  # sessions run in their own threads
            if channel is not None:
                channels.append(channel)


def _listen(host: str, port: int) -> socket.socket:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind)
    except OSError as exc:
        raise DeliveryError(f"cannot listen on {where}: {exc}") from exc
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(64)
        listener.settimeout(ACCEPT_POLL)
    except OSError as exc:
        listener.close()
        raise DeliveryError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    return listener
