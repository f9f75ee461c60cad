"""An SSH registry URL as git reads it: the host ``ssh`` is given and the path git sends.

Both forms git takes: ``ssh://[user@]host[:port]/path`` (``[v6]`` hosts too; a path starting
``/~`` is sent from the ``~``) and scp-like ``[user@]host:path``, where the host may be
bracketed with its user and port (``[git@host:2222]:path``, ``git@[host:22]:path``, ``[::1]:path``).
A port is split off only when git would: digits after the first colon of the bracketed part.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

MAX_PORT = 65535


@dataclass(frozen=True)
class SshUrl:
    user: str | None
    host: str
    port: str | None
    path: str  # what git asks the far side's git-upload-pack for

    def destination(self) -> list[str]:
        """The ``ssh`` arguments naming the host, as git passes them."""
        login = f"{self.user}@{self.host}" if self.user else self.host
        return ["-p", self.port, login] if self.port else [login]


def parse_ssh_url(url: str) -> SshUrl | None:
    """The parts of an SSH registry URL; None when it is not one (a path, https, file)."""
    if url.startswith("ssh://"):
        return _ssh_scheme(url.removeprefix("ssh://"))
    if "://" in url:
        return None
    return _scp_like(url)


def _ssh_scheme(rest: str) -> SshUrl | None:
    slash = rest.find("/")
    if slash <= 0:
        return None
    authority, path = rest[:slash], unquote(rest[slash:], errors="surrogateescape")
    user, _, host_port = authority.rpartition("@")
    if host_port.startswith("["):
        close = host_port.find("]")
        if close < 0:
            return None
        host, after = host_port[1:close], host_port[close + 1 :]
        port = after[1:] if after.startswith(":") else ""
    else:
        host, _, port = host_port.partition(":")
    if not host:
        return None
    return SshUrl(user or None, host, port or None, path[1:] if path.startswith("/~") else path)


def _scp_like(url: str) -> SshUrl | None:
    colon = url.find(":")
    if colon <= 0 or "/" in url[:colon]:
        return None  # a local path, as git decides it
    at = url.find("@[")
    start = at + 1 if at >= 0 else 0
    if url[start : start + 1] == "[":  # a bracketed host, maybe with its user and port
        close = url.find("]", start)
        if close < 0 or url[close + 1 : close + 2] != ":":
            return None
        inner = url[start + 1 : close]
        user = url[:at] if at >= 0 else None
        if user is None:
            user, _, inner = inner.rpartition("@")
        host, port = _split_port(inner)
        path = url[close + 2 :]
    else:
        user, _, host = url[:colon].rpartition("@")
        port, path = None, url[colon + 1 :]
    if not host or not path:
        return None
    return SshUrl(user or None, host, port, path)


def _split_port(host: str) -> tuple[str, str | None]:
    """``host:port`` when what follows the first colon is a port (so not an IPv6 address)."""
    name, colon, port = host.partition(":")
    if colon and port.isdigit() and port.isascii() and int(port) <= MAX_PORT:
        return name, port
    return host, None
