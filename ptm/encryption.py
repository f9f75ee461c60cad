"""Results only the requester can read: the age format, to and from SSH keys, through pyrage.

No cryptography is done here: ``pyrage`` (the Python binding of the Rust ``age`` crate) encrypts
and decrypts, with age's standard SSH recipients (``ssh-ed25519`` and ``ssh-rsa``), so the
reference ``age`` tool decrypts every file ptm writes (``age -d -i ~/.ssh/id_ed25519 FILE``).
This module finds the keys:

- **recipients** are SSH public key lines: the task's verified submitter's lines in the site's
  ``allowed_signers`` (every supported key of that principal; ``cert-authority`` lines are not a
  person's key and are skipped) plus the site's own ``policy.encrypt_to``;
- **identities** are SSH private keys in OpenSSH's format, without a passphrase (age's SSH
  support cannot ask for one here);
- a key's **fingerprint** is OpenSSH's ``SHA256:…`` (what ``ssh-keygen -l`` prints), so an
  auditor can compare the recipients a status names with the keys they know, without any secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ptm.errors import PtmError

if TYPE_CHECKING:
    from pyrage import ssh

# pyrage is imported where it is used, not here: researchers' commands (status, results, audit)
# and 'ptm policy explain' read this module's keys and fingerprints without the age extra.

SUPPORTED_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")
MAX_KEY_FILE_BYTES = 64 * 1024
_PRIVATE_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_PRIVATE_END = "-----END OPENSSH PRIVATE KEY-----"
_OPENSSH_MAGIC = b"openssh-key-v1\0"


class EncryptionError(PtmError):
    """A key is unusable, or a file cannot be encrypted or decrypted; the message says which."""


@dataclass(frozen=True)
class RecipientKey:
    """One SSH public key that may receive encrypted results."""

    key_type: str
    blob: str  # base64, as in the key line

    @property
    def line(self) -> str:
        return f"{self.key_type} {self.blob}"

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(base64.b64decode(self.blob))


def fingerprint_of(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a key blob (``ssh-keygen -l -E sha256``)."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def parse_public_key(text: str, *, source: str) -> RecipientKey:
    """``TYPE BASE64 [comment]`` as a RecipientKey; EncryptionError naming ``source`` if it is not
    one, or not a type age can encrypt to."""
    fields = text.split()
    if len(fields) < 2:
        raise EncryptionError(f"{source}: not an SSH public key line (TYPE BASE64 [comment])")
    key_type, blob = fields[0], fields[1]
    if key_type not in SUPPORTED_KEY_TYPES:
        raise EncryptionError(
            f"{source}: a {key_type[:40]!r} key cannot receive encrypted results; "
            f"age encrypts to {' and '.join(SUPPORTED_KEY_TYPES)} keys"
        )
    try:
        raw = base64.b64decode(blob, validate=True)
    except binascii.Error:
        raise EncryptionError(f"{source}: the key's base64 text is damaged") from None
    if _first_string(raw) != key_type.encode():
        raise EncryptionError(f"{source}: the key's data does not hold a {key_type} key")
    key = RecipientKey(key_type, blob)
    import pyrage
    from pyrage import ssh

    try:
        ssh.Recipient.from_str(key.line)
    except pyrage.RecipientError as exc:
        raise EncryptionError(f"{source}: age cannot encrypt to this key ({exc})") from None
    return key


def _first_string(data: bytes) -> bytes | None:
    """The first SSH wire-format string (uint32 length, bytes) of ``data``."""
    if len(data) < 4:
        return None
    (length,) = struct.unpack(">I", data[:4])
    return data[4 : 4 + length] if len(data) >= 4 + length else None


# ---- allowed_signers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SignerLine:
    """One line of an allowed-signers file: principals, options, key type and key."""

    number: int
    principals: tuple[str, ...]
    options: tuple[str, ...]
    key_type: str
    blob: str

    @property
    def is_cert_authority(self) -> bool:
        return any(o.lower() == "cert-authority" for o in self.options)


def parse_allowed_signers(text: str) -> list[SignerLine]:
    """The lines of ``ssh-keygen``'s ALLOWED SIGNERS format (comments and blanks skipped);
    a line that is not in that format is skipped, as ``ssh-keygen`` does."""
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = _fields(raw.strip())
        if not fields or fields[0].startswith("#") or len(fields) < 3:
            continue
        options: tuple[str, ...] = ()
        rest = fields[1:]
        if not _looks_like_key_type(rest[0]):
            options, rest = tuple(_split_options(rest[0])), rest[1:]
        if len(rest) >= 2:
            principals = tuple(p for p in fields[0].split(",") if p)
            lines.append(SignerLine(number, principals, options, rest[0], rest[1]))
    return lines


def _looks_like_key_type(word: str) -> bool:
    return word.startswith(("ssh-", "ecdsa-", "sk-", "rsa-"))


def _fields(line: str) -> list[str]:
    """Whitespace-separated fields; a double-quoted part (``namespaces="a b"``) stays whole."""
    fields: list[str] = []
    current, quoted = "", False
    for char in line:
        if char == '"':
            quoted = not quoted
        if char.isspace() and not quoted:
            if current:
                fields.append(current)
            current = ""
        else:
            current += char
    if current:
        fields.append(current)
    return fields


def _split_options(text: str) -> list[str]:
    options, current, quoted = [], "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            options.append(current)
            current = ""
        else:
            current += char
    return [*options, current] if current else options


def signer_keys(allowed_signers: Path, principal: str) -> tuple[RecipientKey, ...]:
    """Every key ``allowed_signers`` lists for ``principal`` that age can encrypt to.

    EncryptionError when the file cannot be read, or lists no usable key for the principal
    (the message names the types it did find)."""
    try:
        text = allowed_signers.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EncryptionError(f"{allowed_signers}: cannot read the allowed signers: {exc}") from exc
    found = [
        line
        for line in parse_allowed_signers(text)
        if principal in line.principals and not line.is_cert_authority
    ]
    usable = [line for line in found if line.key_type in SUPPORTED_KEY_TYPES]
    if not usable:
        kinds = sorted({line.key_type[:40] for line in found})
        had = f"only {', '.join(kinds)} keys, which" if kinds else "no key for them, and"
        raise EncryptionError(
            f"{allowed_signers}: lists {had} age cannot encrypt to for {principal!r} "
            f"(policy.allowed_signers needs an {' or '.join(SUPPORTED_KEY_TYPES)} key)"
        )
    return unique_keys(
        parse_public_key(f"{line.key_type} {line.blob}", source=f"{allowed_signers}:{line.number}")
        for line in usable
    )


def unique_keys(keys: Iterable[RecipientKey]) -> tuple[RecipientKey, ...]:
    """``keys`` without repeats (by fingerprint), in their first order."""
    seen: dict[str, RecipientKey] = {}
    for key in keys:
        seen.setdefault(key.fingerprint, key)
    return tuple(seen.values())


def is_key_line(entry: str) -> bool:
    """True when a config entry is a key line itself rather than the name of a key file."""
    words = entry.split(maxsplit=1)
    return bool(words) and _looks_like_key_type(words[0])


def read_key_entry(entry: str, *, source: str) -> RecipientKey:
    """A config entry that is a key line (``ssh-ed25519 AAAA…``) or a file holding one."""
    if is_key_line(entry):
        return parse_public_key(entry, source=source)
    path = Path(entry)
    try:
        text = path.read_text(encoding="utf-8")[:MAX_KEY_FILE_BYTES]
    except (OSError, UnicodeDecodeError) as exc:
        raise EncryptionError(f"{source}: cannot read the public key file {path}: {exc}") from exc
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(lines) != 1:
        raise EncryptionError(f"{source}: {path} must hold exactly one SSH public key line")
    return parse_public_key(lines[0], source=f"{source} ({path})")


# ---- encrypting and decrypting -------------------------------------------------------------


def encrypt(plaintext: bytes, recipients: Sequence[RecipientKey]) -> bytes:
    """An age file (binary) that each of ``recipients`` can decrypt."""
    import pyrage

    targets = _recipients(recipients)
    try:
        return pyrage.encrypt(plaintext, targets)
    except pyrage.EncryptError as exc:
        raise EncryptionError(f"age could not encrypt: {exc}") from exc


def encrypt_file(source: Path, target: Path, recipients: Sequence[RecipientKey]) -> None:
    """``source`` encrypted into ``target`` as an age file, streamed (memory stays flat)."""
    import pyrage

    targets = _recipients(recipients)
    try:
        pyrage.encrypt_file(str(source), str(target), targets)
    except pyrage.EncryptError as exc:
        raise EncryptionError(f"age could not encrypt: {exc}") from exc
    except OSError as exc:
        raise EncryptionError(f"cannot encrypt {source.name}: {exc}") from exc


def _recipients(recipients: Sequence[RecipientKey]) -> list[ssh.Recipient]:
    if not recipients:
        raise EncryptionError("nothing to encrypt to: no recipient key")
    import pyrage
    from pyrage import ssh

    try:
        return [ssh.Recipient.from_str(key.line) for key in recipients]
    except pyrage.RecipientError as exc:
        raise EncryptionError(f"age could not encrypt: {exc}") from exc


@dataclass(frozen=True)
class PrivateKey:
    """A researcher's SSH private key, read for decrypting (never written anywhere)."""

    path: Path
    fingerprint: str | None  # of its public half, when the file shows it
    identity: ssh.Identity


def load_private_key(path: Path) -> PrivateKey:
    """Read an unencrypted OpenSSH private key; EncryptionError saying why it cannot be used."""
    try:
        data = path.read_bytes()[:MAX_KEY_FILE_BYTES]
    except OSError as exc:
        raise EncryptionError(f"{path}: cannot read the private key: {exc.strerror}") from exc
    import pyrage
    from pyrage import ssh

    try:
        identity = ssh.Identity.from_buffer(data)
    except pyrage.IdentityError as exc:
        raise EncryptionError(f"{path}: {_identity_problem(str(exc))}") from None
    return PrivateKey(path, private_key_fingerprint(data), identity)


def _identity_problem(message: str) -> str:
    if "decrypted" in message:
        return "the key has a passphrase; age needs it without one (or use the age tool)"
    if "unsupported" in message.lower():
        return f"not a key age decrypts with ({message}); use ssh-ed25519 or ssh-rsa"
    return f"not an OpenSSH private key ({message})"


def private_key_fingerprint(data: bytes) -> str | None:
    """The fingerprint of the public key an ``openssh-key-v1`` file carries in the clear."""
    text = data.decode("ascii", errors="replace")
    if _PRIVATE_BEGIN not in text or _PRIVATE_END not in text:
        return None
    body = text.split(_PRIVATE_BEGIN, 1)[1].split(_PRIVATE_END, 1)[0]
    try:
        raw = base64.b64decode("".join(body.split()), validate=True)
    except binascii.Error:
        return None
    if not raw.startswith(_OPENSSH_MAGIC):
        return None
    offset = len(_OPENSSH_MAGIC)
    for _ in range(3):  # cipher name, kdf name, kdf options
        field = _first_string(raw[offset:])
        if field is None:
            return None
        offset += 4 + len(field)
    offset += 4  # number of keys
    public = _first_string(raw[offset:])
    return fingerprint_of(public) if public else None


def decrypt(ciphertext: bytes, key: PrivateKey, *, source: str, recipients: Sequence[str]) -> bytes:
    """The plaintext of an age file; EncryptionError in one line when ``key`` is not one of its
    recipients (``recipients``: the fingerprints it says it was encrypted to) or when the file
    fails age's integrity check."""
    import pyrage

    try:
        return pyrage.decrypt(ciphertext, [key.identity])
    except pyrage.DecryptError as exc:
        raise _decrypt_problem(exc, key, source, recipients) from None


def decrypt_file(
    path: Path, target: Path, key: PrivateKey, *, source: str, recipients: Sequence[str]
) -> None:
    """``decrypt`` from the file ``path`` into the new file ``target``, streamed. age checks
    each 64 KiB chunk as it goes: after a failure ``target`` holds a part, to be thrown away."""
    import pyrage

    try:
        pyrage.decrypt_file(str(path), str(target), [key.identity])
    except pyrage.DecryptError as exc:
        raise _decrypt_problem(exc, key, source, recipients) from None
    except OSError as exc:
        raise EncryptionError(f"{source}: cannot decrypt it: {exc}") from exc


def _decrypt_problem(
    exc: Exception, key: PrivateKey, source: str, recipients: Sequence[str]
) -> EncryptionError:
    if "no matching keys" in str(exc).lower():
        yours = f" ({key.fingerprint})" if key.fingerprint else ""
        listed = ", ".join(recipients) or "keys it does not name"
        return EncryptionError(
            f"{source}: not encrypted to your key {key.path}{yours}; it is for {listed}"
        )
    return EncryptionError(
        f"{source}: age's integrity check failed ({exc}): the file is damaged or was changed"
    )
