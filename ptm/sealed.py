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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, BinaryIO

from ptm.encryption import (
    EncryptionError,
    PrivateKey,
    RecipientKey,
    decrypt_file,
    encrypt_file,
    load_private_key,
    signer_keys,
    unique_keys,
)
from ptm.errors import InvalidDocument
from ptm.outputs import name_problem
from ptm.result_layout import LOG_FILE, OUTPUT_DIR, SEALED_FILE, STATUS_FILE, own_files
from ptm.schema import dump_yaml, load_yaml_text
from ptm.siteconfig import SiteConfig
from ptm.status import StatusRecord, load_status
from ptm.task import Task

OUTPUT_REFUSED = "output refused"  # how ptm.execution's reason for a refused output begins
MAX_MEMBERS = 100_000
MAX_STATUS_BYTES = 4 * 1024**2
CHUNK = 1024 * 1024
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
    record: StatusRecord, site: SiteConfig, log: bytes, outputs: Path | None, target: Path
) -> StatusRecord:
    """Write ``result.age`` to the new file ``target``; the public record. EncryptionError if
    it cannot be made. Streamed through a plain tar beside ``target``: memory stays flat
    whatever the outputs hold."""
    keys = result_recipients(site, record.submitted_by)
    full = replace(
        record,
        encrypted_to=tuple(key.fingerprint for key in keys),
        output_count=len(record.outputs),
        output_bytes=sum(int(entry["bytes"]) for entry in record.outputs),
    )
    members: list[tuple[str, bytes | Path]] = [
        (STATUS_FILE, dump_yaml(full.to_document()).encode()),
        (LOG_FILE, log),
    ]
    if outputs is not None:
        members += [(f"{OUTPUT_DIR}/{rel}", path) for rel, path in own_files(outputs)]
    plain = target.with_name(f".{target.name}.tar")
    try:
        with plain.open("xb") as stream:
            write_archive(stream, members, mtime=_epoch(full.finished_at))
        encrypt_file(plain, target, keys)
        size, digest = file_digest(target)
    except OSError as exc:
        raise EncryptionError(f"cannot seal the result: {exc}") from exc
    finally:
        plain.unlink(missing_ok=True)
    return public_view(full, size, digest)


def public_view(record: StatusRecord, size: int, sha256: str) -> StatusRecord:
    """What everyone may read of a sealed result whose ``result.age`` has this size and hash."""
    entry = {"path": SEALED_FILE, "bytes": size, "sha256": sha256}
    return replace(record, outputs=(entry,), skipped=(), reason=public_reason(record.reason))


def file_digest(path: Path) -> tuple[int, str]:
    """(size, SHA-256) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


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
        for rel, path in own_files(source):
            destination = target / f"{rel}.age"
            destination.parent.mkdir(parents=True, exist_ok=True)
            encrypt_file(path, destination, keys)
    except (OSError, EncryptionError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, EncryptionError):
            raise
        raise EncryptionError(f"cannot encrypt the files for delivery: {exc}") from exc
    return target


def write_archive(
    stream: BinaryIO, members: Iterable[tuple[str, bytes | Path]], *, mtime: int
) -> None:
    """A pax tar of regular files (given as bytes or as a file to copy), owned by nobody in
    particular, all with time ``mtime``."""
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, mtime
            if isinstance(content, bytes):
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
                continue
            with content.open("rb") as source:
                info.size = os.fstat(source.fileno()).st_size
                archive.addfile(info, source)


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
    """Replace ``folder``'s ``result.age`` by the checked files it holds; the folder's files.
    Streamed: decrypted into a plain tar, unpacked file by file, so memory stays flat."""
    sealed_path = folder / SEALED_FILE
    source = str(sealed_path)
    try:
        outer = load_status(folder / STATUS_FILE)
    except InvalidDocument as exc:
        raise EncryptionError(f"{source}: the status beside it is unreadable: {exc}") from None
    _check_ciphertext(outer, sealed_path, source)
    staging = Path(tempfile.mkdtemp(prefix=".unsealed.", dir=folder))
    try:
        plain = staging / "plain.tar"
        decrypt_file(sealed_path, plain, key, source=source, recipients=outer.encrypted_to)
        unpacked = unpack_archive(plain, staging / "result", source=source)
        plain.unlink()
        status = _check_contents(outer, unpacked, source)
        _move_in(folder, staging / "result", status)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sealed_path.unlink()
    return tuple(
        path.relative_to(folder).as_posix()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    )


def _check_ciphertext(outer: StatusRecord, path: Path, source: str) -> None:
    listed = [dict(entry) for entry in outer.outputs if entry.get("path") == SEALED_FILE]
    size, digest = file_digest(path)
    if len(listed) != 1 or listed[0].get("sha256") != digest or listed[0].get("bytes") != size:
        raise EncryptionError(
            f"{source}: does not match the size and SHA-256 that status.yaml gives for it; "
            "it was changed after the site wrote it"
        )


@dataclass(frozen=True)
class Unpacked:
    """What a sealed result's tar held: its status.yaml, and (size, SHA-256) of each other
    file, written below the folder it was unpacked into."""

    status: bytes | None
    files: Mapping[str, tuple[int, str]]


def unpack_archive(plain: Path, into: Path, *, source: str) -> Unpacked:
    """Unpack the tar inside a sealed result into the new folder ``into``, checking each member
    before anything of it is written; EncryptionError for anything odd."""
    status: bytes | None = None
    files: dict[str, tuple[int, str]] = {}
    seen: set[str] = set()
    into.mkdir()
    try:
        with tarfile.open(plain, mode="r:") as archive:
            for member in archive:
                _check_member(member, seen, source)
                seen.add(member.name)
                handle = archive.extractfile(member)
                assert handle is not None  # a regular file (checked)
                if member.name == STATUS_FILE:
                    status = _read_status(handle, member.size, source)
                else:
                    files[member.name] = _write_new(into, member.name, handle, source)
    except tarfile.TarError as exc:
        raise EncryptionError(f"{source}: what it holds is not a readable tar: {exc}") from exc
    return Unpacked(status, files)


def _read_status(handle: IO[bytes], size: int, source: str) -> bytes:
    if size > MAX_STATUS_BYTES:
        raise EncryptionError(
            f"{source}: its status.yaml is {size} bytes, more than {MAX_STATUS_BYTES} allowed"
        )
    return handle.read(MAX_STATUS_BYTES + 1)


def _check_member(member: tarfile.TarInfo, seen: Collection[str], source: str) -> None:
    shown = ascii(member.name[:200])
    if len(seen) >= MAX_MEMBERS:
        raise EncryptionError(f"{source}: holds more than {MAX_MEMBERS} files")
    # Not member.isreg(): that admits sparse members, whose few bytes of archive unpack into
    # any size their header claims (a site could fill the researcher's disk).
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
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


def _check_contents(outer: StatusRecord, unpacked: Unpacked, source: str) -> bytes:
    """The inner status.yaml, once it and every file check out."""
    if unpacked.status is None:
        raise EncryptionError(f"{source}: holds no status.yaml")
    try:
        document = load_yaml_text(unpacked.status, source=source, max_bytes=MAX_STATUS_BYTES)
        inner = StatusRecord.from_document(document, source=f"{source}: status.yaml")
    except InvalidDocument as exc:
        raise EncryptionError(f"{source}: its status.yaml is invalid: {exc}") from None
    if (inner.task, inner.site, inner.task_commit) != (outer.task, outer.site, outer.task_commit):
        raise EncryptionError(
            f"{source}: holds the result of task {inner.task} at {inner.site} (commit "
            f"{inner.task_commit[:12]}), not of this one"
        )
    found = {n: f for n, f in unpacked.files.items() if n.startswith(f"{OUTPUT_DIR}/")}
    listed = {} if inner.delivered_to else {str(e["path"]): e for e in inner.outputs}
    if set(found) != set(listed):
        raise EncryptionError(f"{source}: its files differ from the list in its status.yaml")
    for name, (size, digest) in found.items():
        entry = listed[name]
        if entry["bytes"] != size or entry["sha256"] != digest:
            raise EncryptionError(f"{source}: {name!a} differs from the SHA-256 its status gives")
    return unpacked.status


def _move_in(folder: Path, unpacked: Path, status: bytes) -> None:
    """Put the unpacked files and the inner (complete) status in place of the sealed layout,
    the status last."""
    (unpacked / STATUS_FILE).write_bytes(status)
    for name in (LOG_FILE, OUTPUT_DIR):
        _remove(folder / name)
    for name in (LOG_FILE, OUTPUT_DIR, STATUS_FILE):
        if (unpacked / name).exists():
            (unpacked / name).replace(folder / name)


def _write_new(root: Path, name: str, handle: IO[bytes], source: str) -> tuple[int, str]:
    """Copy one member into a new file below ``root``: its (size, SHA-256)."""
    target = root.joinpath(*name.split("/"))
    digest = hashlib.sha256()
    size = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        # Every folder below ``root`` is made here, in a folder made moments ago: none is a link.
        target.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(target, flags, 0o644), "wb") as stream:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                stream.write(chunk)
    except OSError as exc:  # a file where a folder must go, or a clash of names
        raise EncryptionError(f"{source}: cannot be unpacked: {exc}") from exc
    return size, digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
