"""The SFTP service's config file (``schemas/sftp.schema.json``) and its host key.

The host key is created on first start if missing (ed25519, OpenSSH format, mode 0600) and kept;
a key file that others can read is refused, as sshd does.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator

from ptm.errors import ConfigError, InvalidDocument, Problem
from ptm.schema import describe_error, error_sort_key, load_yaml_file
from ptm.ssh_keys import PublicKey

DEFAULT_MAX_FILE_BYTES = 1024**3
DEFAULT_QUOTA_BYTES = 10 * 1024**3


# -- config -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SftpAccount:
    name: str
    public_key: PublicKey
    quota_bytes: int = DEFAULT_QUOTA_BYTES


@dataclass(frozen=True)
class SftpServiceConfig:
    host: str
    port: int
    host_key: Path
    root: Path
    accounts: Mapping[str, SftpAccount] = field(default_factory=dict, hash=False)
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "accounts", MappingProxyType(dict(self.accounts)))

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def load_sftp_config(path: Path) -> SftpServiceConfig:
    """Load and check ``path``; InvalidDocument or ConfigError list every problem found."""
    source = str(path)
    document = load_yaml_file(path, source=source)
    return sftp_config_from_document(document, source=source, base_dir=path.parent)


def sftp_config_from_document(
    document: Mapping[str, Any], *, source: str, base_dir: Path
) -> SftpServiceConfig:
    errors = sorted(_schema_validator().iter_errors(document), key=error_sort_key)
    problems = [problem for error in errors for problem in describe_error(error, source=source)]
    if problems:
        raise InvalidDocument(problems)
    host, port = _split_listen(document["listen"])
    if port > 65535:
        problems.append(Problem(source, "listen", "port", f"port {port} is above 65535"))
    accounts = {}
    for name, entry in document["accounts"].items():
        try:
            key = PublicKey.parse(entry["public_key"])
        except ValueError as exc:
            problems.append(Problem(source, f"accounts.{name}.public_key", "public-key", str(exc)))
            continue
        accounts[name] = SftpAccount(name, key, entry.get("quota_bytes", DEFAULT_QUOTA_BYTES))
    if problems:
        raise ConfigError("\n".join(str(problem) for problem in problems))
    base = base_dir.absolute()
    return SftpServiceConfig(
        host=host,
        port=port,
        host_key=Path(os.path.normpath(base / document["host_key"])),
        root=Path(os.path.normpath(base / document["root"])),
        accounts=accounts,
        max_file_bytes=document.get("max_file_bytes", DEFAULT_MAX_FILE_BYTES),
    )


@functools.cache
def _schema_validator() -> Draft202012Validator:
    text = resources.files("ptm.schemas").joinpath("sftp.schema.json").read_text("utf-8")
    return Draft202012Validator(json.loads(text))


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def load_or_create_host_key(path: Path) -> paramiko.PKey:
    """The service's private host key; a new ed25519 key is written (0600) when none exists."""
    if not path.exists():
        _create_host_key(path)
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(f"{path}: host key is readable by others; run chmod 600 {path}")
        return paramiko.PKey.from_path(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read host key: {exc.strerror or exc}") from exc
    except (paramiko.SSHException, ValueError, TypeError) as exc:
        message = "is not an unencrypted OpenSSH ed25519, ECDSA or RSA private key"
        raise ConfigError(f"{path}: host key {message}") from exc


def _create_host_key(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create host key: {exc.strerror}") from exc
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(draft, path)  # complete or absent, and never replaces a key
    except FileExistsError:
        pass  # another start made one first: keep that one
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create host key: {exc.strerror}") from exc
    finally:
        Path(draft).unlink()
