"""SSH public keys as ``authorized_keys`` lines, for host keys and account keys."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

import paramiko

# Host key algorithms a client may negotiate for each public key type it was told to expect.
HOST_KEY_ALGORITHMS = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
}


@dataclass(frozen=True)
class PublicKey:
    """An SSH public key as written in an ``authorized_keys`` line: type and wire blob."""

    key_type: str
    blob: bytes

    @classmethod
    def parse(cls, line: str) -> PublicKey:
        """``"ssh-ed25519 AAAA… [comment]"``; ValueError saying what is wrong otherwise."""
        fields = line.split()
        if len(fields) < 2:
            raise ValueError("expected '<type> <base64 key> [comment]'")
        key_type, encoded = fields[0], fields[1]
        if key_type not in HOST_KEY_ALGORITHMS:
            known = ", ".join(HOST_KEY_ALGORITHMS)
            raise ValueError(f"unsupported key type {key_type!r} (supported: {known})")
        try:
            blob = base64.b64decode(encoded, validate=True)
            paramiko.PKey.from_type_string(key_type, blob)  # refuses a blob of another type
        except (binascii.Error, paramiko.SSHException, ValueError, TypeError) as exc:
            raise ValueError(f"the {key_type} key is not valid base64 key data") from exc
        return cls(key_type, blob)

    @classmethod
    def of(cls, key: paramiko.PKey) -> PublicKey:
        return cls(key.get_name(), key.asbytes())

    @property
    def line(self) -> str:
        return f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"

    @property
    def fingerprint(self) -> str:
        """OpenSSH's ``SHA256:…`` fingerprint, safe to show (it is of a public key)."""
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode("ascii")
        return f"SHA256:{digest.rstrip('=')}"

    def matches(self, key: paramiko.PKey) -> bool:
        return key.get_name() == self.key_type and hmac.compare_digest(key.asbytes(), self.blob)
