"""Real git fixtures: bare registries in temp folders, clones, SSH signing keys from ssh-keygen."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from ptm.registry import init_registry


@dataclass(frozen=True)
class SigningKey:
    principal: str
    private: Path
    public_line: str

    def allowed_signers_line(self) -> str:
        return f'{self.principal} namespaces="git" {self.public_line}'


def make_signing_key(folder: Path, principal: str) -> SigningKey:
    folder.mkdir(parents=True, exist_ok=True)
    private = folder / f"{principal.split('@')[0]}_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(private)],
        check=True,
    )
    public = private.with_name(private.name + ".pub").read_text().split()
    return SigningKey(principal, private, f"{public[0]} {public[1]}")


def write_allowed_signers(path: Path, *keys: SigningKey) -> Path:
    path.write_text("".join(k.allowed_signers_line() + "\n" for k in keys))
    return path


def sign_options(key: SigningKey | None) -> list[str]:
    """git ``-c`` options that sign commits with ``key``, or make sure nothing signs them."""
    if key is None:
        return ["-c", "commit.gpgSign=false"]
    return [
        *("-c", "gpg.format=ssh", "-c", f"user.signingKey={key.private}"),
        *("-c", "commit.gpgSign=true"),
    ]


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def clone(bare: Path, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(bare), str(dest)], check=True)
    return dest


@pytest.fixture
def bare_registry(tmp_path: Path) -> Path:
    path = tmp_path / "registry.git"
    init_registry(path, bare=True)
    return path


@pytest.fixture
def registry_clone(bare_registry: Path, tmp_path: Path) -> Path:
    return clone(bare_registry, tmp_path / "clone")


@pytest.fixture
def alice(tmp_path: Path) -> SigningKey:
    return make_signing_key(tmp_path / "keys", "alice@uni.example")


@pytest.fixture
def mallory(tmp_path: Path) -> SigningKey:
    return make_signing_key(tmp_path / "keys", "mallory@evil.example")
