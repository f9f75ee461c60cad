"""Sealed results: a finished task's log and outputs in one age file on the results branch.

When a task asks ``encrypt: true`` or the site sets ``policy.require_encryption``, the agent
publishes, instead of ``log.txt`` and ``output/…``::

    results/<task>/<site>/status.yaml   what everyone may read (below)
    results/<task>/<site>/result.age    age, binary, to the submitter's keys and policy.encrypt_to

``result.age`` holds a tar (POSIX pax) of ``status.yaml`` (the complete status: output names,
sizes and SHA-256, what was skipped), ``log.txt`` and ``output/…``; unpacked over the site's
folder it gives exactly the folder an unencrypted result would be:
``age -d -i ~/.ssh/id_ed25519 result.age | tar -x``.

The public ``status.yaml`` keeps state, times, exit code, image and digest, the submitter, and
adds ``encrypted_to`` (key fingerprints), ``output_count`` and ``output_bytes``; its ``outputs``
lists only ``result.age`` (the ciphertext's size and SHA-256, which bind the file to this signed
status), ``skipped`` is empty, and a reason that would name an output file leaves the name out.
Which keys will be used is decided when the task starts (``encrypted_to`` appears from
``pulling`` on); a task whose results must be encrypted and cannot be fails before it runs.

Reading a sealed result (``unseal_folder``) treats it as hostile, like everything on a results
branch: the ciphertext must match the status, age's integrity check must pass, the tar may hold
only regular files with those names, its status must be for the same task, site and commit, and
every output must match the size and SHA-256 the inner status gives; only then is anything
moved into the folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from ptm.encryption import (
    EncryptionError,
    PrivateKey,
    RecipientKey,
    decrypt,
    encrypt,
    load_private_key,
    signer_keys,
    unique_keys,
)
from ptm.errors import InvalidDocument
from ptm.ledger import LOG_FILE, OUTPUT_DIR, SEALED_FILE, STATUS_FILE
from ptm.outputs import name_problem
from ptm.schema import dump_yaml, load_yaml_text
from ptm.siteconfig import SiteConfig
from ptm.status import StatusRecord, load_status
from ptm.task import Task

OUTPUT_REFUSED = "output refused"  # how ptm.execution's reason for a refused output begins
MAX_MEMBERS = 100_000
MAX_STATUS_BYTES = 4 * 1024**2
__all__ = ["SEALED_FILE", "EncryptionError"]


# ---- at the site -----------------------------------------------------------------------------


def encryption_wanted(task: Task, site: SiteConfig) -> bool:
    return task.encrypt or site.policy.require_encryption


def result_recipients(site: SiteConfig, submitted_by: str | None) -> tuple[RecipientKey, ...]:
    """The verified submitter's keys from ``allowed_signers``, then ``policy.encrypt_to``."""
    rule = "its results must be encrypted (encrypt: true or policy.require_encryption)"
    if submitted_by is None:
        raise EncryptionError(
            f"{rule}, but no verified submitter signed it whose key they could be encrypted "
            "to (sign the task with a key the site lists in allowed_signers); nothing was "
            "published"
        )
    if site.policy.allowed_signers is None:
        raise EncryptionError(f"{rule}, but the site has no policy.allowed_signers to find keys")
    try:
        own = signer_keys(site.policy.allowed_signers, submitted_by)
    except EncryptionError as exc:
        raise EncryptionError(f"{rule}: {exc}; nothing was published") from None
    return unique_keys((*own, *site.policy.encrypt_to))


def plan_encryption(record: StatusRecord, task: Task, site: SiteConfig) -> StatusRecord:
    """``record`` naming the keys its results will be encrypted to, when they are to be;
    EncryptionError when they must be and cannot."""
    if not encryption_wanted(task, site):
        return record
    keys = result_recipients(site, record.submitted_by)
    return replace(record, encrypted_to=tuple(key.fingerprint for key in keys))


def must_seal(record: StatusRecord, site: SiteConfig) -> bool:
    return bool(record.encrypted_to) or site.policy.require_encryption


def seal(
    record: StatusRecord, site: SiteConfig, log: bytes, outputs: Path | None
) -> tuple[StatusRecord, bytes]:
    """(the public record, the bytes of ``result.age``); EncryptionError if it cannot be made."""
    keys = result_recipients(site, record.submitted_by)
    full = replace(
        record,
        encrypted_to=tuple(key.fingerprint for key in keys),
        output_count=len(record.outputs),
        output_bytes=sum(int(entry["bytes"]) for entry in record.outputs),
    )
    members = [(STATUS_FILE, dump_yaml(full.to_document()).encode()), (LOG_FILE, log)]
    if outputs is not None:
        members += [(f"{OUTPUT_DIR}/{rel}", path.read_bytes()) for rel, path in _files(outputs)]
    sealed = encrypt(build_archive(members, mtime=_epoch(full.finished_at)), keys)
    return public_view(full, sealed), sealed


def public_view(record: StatusRecord, sealed: bytes) -> StatusRecord:
    digest = hashlib.sha256(sealed).hexdigest()
    entry = {"path": SEALED_FILE, "bytes": len(sealed), "sha256": digest}
    return replace(record, outputs=(entry,), skipped=(), reason=public_reason(record.reason))


def public_reason(reason: str | None) -> str | None:
    if reason is not None and reason.startswith(OUTPUT_REFUSED):
        return (
            "output refused, nothing of it was published (the encrypted result's status.yaml "
            "says which file and why)"
        )
    return reason


def unpublishable(record: StatusRecord, problem: EncryptionError) -> StatusRecord:
    """What a site that must encrypt publishes when it cannot: the failure, no names."""
    return replace(
        record,
        state="failed",
        reason=str(problem),
        outputs=(),
        skipped=(),
        output_count=None,
        output_bytes=None,
        encrypted_to=(),
    )


def encrypt_folder(source: Path, keys: Sequence[RecipientKey]) -> Path:
    """Each file of ``source`` encrypted to ``keys`` as ``<name>.age`` in a new sibling folder."""
    target = Path(tempfile.mkdtemp(prefix=f".{source.name}.", suffix=".age", dir=source.parent))
    try:
        for rel, path in _files(source):
            destination = target / f"{rel}.age"
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(encrypt(path.read_bytes(), keys))
    except OSError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise EncryptionError(f"cannot encrypt the files for delivery: {exc}") from exc
    return target


def build_archive(members: Iterable[tuple[str, bytes]], *, mtime: int) -> bytes:
    """A pax tar of regular files, owned by nobody in particular, all with time ``mtime``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _files(folder: Path) -> list[tuple[str, Path]]:
    """Regular files below a folder this agent made itself (collected outputs), sorted."""
    return [
        (path.relative_to(folder).as_posix(), path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    ]


def _epoch(stamp: str | None) -> int:
    if stamp is None:
        return 0
    moment = datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


# ---- where the researcher collects -------------------------------------------------------------


def signing_key_path(configured: str | None) -> Path | None:
    """The private key behind git's ``user.signingkey`` (a path, maybe of the ``.pub`` half)."""
    if not configured or configured.startswith(("key::", "ssh-")):
        return None
    path = Path(configured).expanduser()
    return path.with_name(path.name[: -len(".pub")]) if path.name.endswith(".pub") else path


def unseal_collected(
    folders: Iterable[Path], identity: Path | None, *, configured: Callable[[], str | None]
) -> dict[Path, tuple[str, ...]]:
    """Decrypt every collected site folder that holds a ``result.age`` with ``identity`` (or
    the key ``configured()`` names: git's user.signingkey); folder → the files it now holds."""
    sealed = [folder for folder in folders if _is_sealed(folder)]
    if not sealed:
        return {}
    path = identity if identity is not None else signing_key_path(configured())
    if path is None:
        raise EncryptionError(
            f"{sealed[0] / SEALED_FILE}: the result is encrypted; name your SSH private key "
            "with --identity KEY (or set git's user.signingkey)"
        )
    key = load_private_key(path)
    return {folder: unseal_folder(folder, key) for folder in sealed}


def _is_sealed(folder: Path) -> bool:
    path = folder / SEALED_FILE
    return path.is_file() and not path.is_symlink()


def unseal_folder(folder: Path, key: PrivateKey) -> tuple[str, ...]:
    """Replace ``folder``'s ``result.age`` by the checked files it holds; the folder's files."""
    sealed_path = folder / SEALED_FILE
    source = str(sealed_path)
    try:
        outer = load_status(folder / STATUS_FILE)
    except InvalidDocument as exc:
        raise EncryptionError(f"{source}: the status beside it is unreadable: {exc}") from None
    data = sealed_path.read_bytes()
    _check_ciphertext(outer, data, source)
    plain = decrypt(data, key, source=source, recipients=outer.encrypted_to)
    members = read_archive(plain, source=source)
    _check_contents(outer, members, source)
    _move_in(folder, members)
    sealed_path.unlink()
    return tuple(
        path.relative_to(folder).as_posix()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    )


def _check_ciphertext(outer: StatusRecord, data: bytes, source: str) -> None:
    listed = [dict(entry) for entry in outer.outputs if entry.get("path") == SEALED_FILE]
    digest = hashlib.sha256(data).hexdigest()
    if len(listed) != 1 or listed[0].get("sha256") != digest or listed[0].get("bytes") != len(data):
        raise EncryptionError(
            f"{source}: does not match the size and SHA-256 that status.yaml gives for it; "
            "it was changed after the site wrote it"
        )


def read_archive(data: bytes, *, source: str) -> dict[str, bytes]:
    """name → content of the tar inside a sealed result; EncryptionError for anything odd."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                _check_member(member, members, source)
                handle = archive.extractfile(member)
                members[member.name] = handle.read() if handle is not None else b""
    except tarfile.TarError as exc:
        raise EncryptionError(f"{source}: what it holds is not a readable tar: {exc}") from exc
    return members


def _check_member(member: tarfile.TarInfo, seen: Mapping[str, bytes], source: str) -> None:
    shown = ascii(member.name[:200])
    if len(seen) >= MAX_MEMBERS:
        raise EncryptionError(f"{source}: holds more than {MAX_MEMBERS} files")
    if not member.isreg():
        raise EncryptionError(f"{source}: holds {shown}, which is not a regular file")
    if not _allowed_name(member.name):
        raise EncryptionError(f"{source}: holds {shown}, a name a result may not have")
    if member.name in seen:
        raise EncryptionError(f"{source}: holds {shown} twice")


def _allowed_name(name: str) -> bool:
    if name in (STATUS_FILE, LOG_FILE):
        return True
    head, _, rest = name.partition("/")
    if head != OUTPUT_DIR or not rest or len(rest.encode("utf-8", "replace")) > 3584:
        return False
    parts = rest.split("/")
    return all(part not in ("", ".", "..") and name_problem(part) is None for part in parts)


def _check_contents(outer: StatusRecord, members: Mapping[str, bytes], source: str) -> None:
    if STATUS_FILE not in members:
        raise EncryptionError(f"{source}: holds no status.yaml")
    try:
        document = load_yaml_text(members[STATUS_FILE], source=source, max_bytes=MAX_STATUS_BYTES)
        inner = StatusRecord.from_document(document, source=f"{source}: status.yaml")
    except InvalidDocument as exc:
        raise EncryptionError(f"{source}: its status.yaml is invalid: {exc}") from None
    if (inner.task, inner.site, inner.task_commit) != (outer.task, outer.site, outer.task_commit):
        raise EncryptionError(
            f"{source}: holds the result of task {inner.task} at {inner.site} (commit "
            f"{inner.task_commit[:12]}), not of this one"
        )
    found = {name: data for name, data in members.items() if name.startswith(f"{OUTPUT_DIR}/")}
    listed = {} if inner.delivered_to else {str(e["path"]): e for e in inner.outputs}
    if set(found) != set(listed):
        raise EncryptionError(f"{source}: its files differ from the list in its status.yaml")
    for name, data in found.items():
        entry = listed[name]
        if entry["bytes"] != len(data) or entry["sha256"] != hashlib.sha256(data).hexdigest():
            raise EncryptionError(f"{source}: {name!a} differs from the SHA-256 its status gives")


def _move_in(folder: Path, members: Mapping[str, bytes]) -> None:
    """Write the members into a fresh folder, then put them in place of the sealed layout."""
    staging = Path(tempfile.mkdtemp(prefix=".unsealed.", dir=folder))
    try:
        try:
            for name, data in members.items():
                _write_new(staging, name, data)
        except OSError as exc:  # a file where a folder must go, or a clash of names
            raise EncryptionError(f"{folder / SEALED_FILE}: cannot be unpacked: {exc}") from exc
        for name in (LOG_FILE, OUTPUT_DIR):
            _remove(folder / name)
        for name in (LOG_FILE, OUTPUT_DIR, STATUS_FILE):
            if (staging / name).exists():
                (staging / name).replace(folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_new(root: Path, name: str, data: bytes) -> None:
    target = root.joinpath(*name.split("/"))
    # Every folder below ``root`` is made here, in a folder made moments ago: none is a link.
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(target, flags, 0o644), "wb") as stream:
        stream.write(data)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
