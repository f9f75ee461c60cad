"""Which commits a task's trust rests on, and their SSH signatures verified at a chosen time.

git's own check (``%G?``) tests a key's ``valid-after``/``valid-before`` in ``allowed_signers``
against the committer date, which whoever pushes the commit writes. Here each commit's
``gpgsig`` header and signed payload are taken from the raw commit object and handed to
``ssh-keygen -Y find-principals`` and ``ssh-keygen -Y verify -n git -O verify-time=…`` at a time
the caller chooses: the agent passes the moment it judges the task (the first cycle that sees
the commit), ``ptm audit`` the time a site recorded receiving it. The allowed signers file is
read on every call, so a key taken out of it stops counting for every task not yet acted on.

Which commits count for a path (``path_commits``): every commit up to the head that changed it,
and every merge whose version of it differs from the version in each one of its parents (an
"evil merge": content that no parent had, made by whoever made the merge). A merge that brings
in one parent's version unchanged is not listed: the commits on that side are.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from ptm.errors import ConfigError, PtmError
from ptm.gitrepo import GitRepo, SignatureCheck
from ptm.gittrees import read_objects
from ptm.process import run_bounded
from ptm.task import CANCEL_FILE, TASKS_DIR

UTC = timezone.utc

RECORD = "\x1e"
SSH_SIGNATURE = b"-----BEGIN SSH SIGNATURE-----"
NAMESPACE = "git"
VERIFY_WORKERS = 4
SSH_KEYGEN_LIMIT = 60.0  # seconds; ssh-keygen reads local files only
EVIL_MERGE = "brings content none of its parents had"
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@dataclass(frozen=True)
class PathCommit:
    """A commit that changed a path; ``merge`` when it is a merge with content of its own."""

    commit: str
    parents: tuple[str, ...]

    @property
    def merge(self) -> bool:
        return len(self.parents) > 1


@dataclass(frozen=True)
class CommitSignature(SignatureCheck):
    """A ``SignatureCheck`` made by ptm itself. ``merge``: an evil merge for the path asked
    about; ``detail``: what went wrong, more precisely than the status letter says."""

    merge: bool = False
    detail: str = ""
    verified_at: str = ""

    def describe(self) -> str:
        return self.detail or super().describe()


def commit_label(check: SignatureCheck) -> str:
    """``commit 1a2b… ('subject' by author)``, saying so when it is an evil merge."""
    where = f"commit {check.commit[:12]} ({check.subject!r} by {check.author})"
    if isinstance(check, CommitSignature) and check.merge:
        return f"merge {where}, which {EVIL_MERGE}"
    return where


# -- which commits ---------------------------------------------------------------------------


def task_commits(repo: GitRepo, head: str, task_id: str) -> tuple[PathCommit, ...]:
    """Every commit up to ``head`` that changed ``tasks/<id>/``, evil merges included; newest
    first, each commit before its parents (``--topo-order``: committer dates do not count).
    Commits that changed nothing but ``cancel.yaml`` are left out: a cancel is judged by its
    own rule (``verify_cancel``), and must not make the task itself untrusted."""
    listed = path_commits(repo, head, f"{TASKS_DIR}/{task_id}")
    cancel_only = _cancel_only(repo, head, task_id)
    return tuple(c for c in listed if c.commit not in cancel_only)


def _cancel_only(repo: GitRepo, head: str, task_id: str) -> set[str]:
    """Commits whose every change below ``tasks/<id>/`` is to ``cancel.yaml``."""
    out = repo.run(
        "--literal-pathspecs",
        "log",
        "--full-history",
        "--no-renames",
        "-m",
        "--name-only",
        f"--format={RECORD}%H",
        "--end-of-options",
        head,
        "--",
        f"{TASKS_DIR}/{task_id}",
    )
    names: dict[str, set[str]] = {}
    current = ""
    for line in out.split("\n"):
        if line.startswith(RECORD):
            current = line[1:].strip()
            names.setdefault(current, set())
        elif line and current:
            names[current].add(line)
    cancel = f"{TASKS_DIR}/{task_id}/{CANCEL_FILE}"
    return {sha for sha, paths in names.items() if paths == {cancel}}


def path_commits(repo: GitRepo, head: str, path: str) -> tuple[PathCommit, ...]:
    """``task_commits`` for any path, in one ``git log``: ``-m`` shows a merge once for each
    parent it differs from (for ``path``), so a merge shown once per parent is an evil one."""
    out = repo.run(
        "--literal-pathspecs",
        "log",
        "--no-show-signature",  # whatever the user's log.showSignature or color settings
        "--no-color",
        "--full-history",
        "--topo-order",
        "--no-renames",
        "-m",
        "--name-only",
        f"--format={RECORD}%H %P",
        "--end-of-options",
        head,
        "--",
        path,
    )
    return parse_path_log(out)


def parse_path_log(output: str) -> tuple[PathCommit, ...]:
    """Pure: the commits of ``path_commits``' log (header lines start with RECORD, which a
    path line never does: git quotes names with control characters)."""
    shown: dict[str, int] = {}
    order: list[PathCommit] = []
    for line in output.split("\n"):  # not splitlines(): it splits at RECORD too
        if not line.startswith(RECORD):
            continue
        sha, *parents = line[1:].split()
        if sha not in shown:
            order.append(PathCommit(sha, tuple(parents)))
        shown[sha] = shown.get(sha, 0) + 1
    return tuple(c for c in order if not c.merge or shown[c.commit] == len(c.parents))


# -- reading commit objects ------------------------------------------------------------------


@dataclass(frozen=True)
class RawCommit:
    """One commit object split the way git does before verifying it."""

    commit: str
    payload: bytes  # the object without its gpgsig headers: what the signature covers
    signature: bytes | None
    author: str  # the author's email
    subject: str
    committed_at: datetime


def parse_commit(commit: str, data: bytes) -> RawCommit:
    """Pure: like git's ``parse_buffer_signed_by_header``, drop every ``gpgsig*`` header with
    its continuation lines from the payload and keep ``gpgsig``'s lines as the signature."""
    header, separator, message = data.partition(b"\n\n")
    kept: list[bytes] = []
    signature: list[bytes] = []
    skipping = in_signature = False
    fields: dict[bytes, bytes] = {}
    for line in header.split(b"\n"):
        if line.startswith(b" ") and (skipping or in_signature):
            if in_signature:
                signature.append(line[1:])
            continue
        in_signature = line.startswith(b"gpgsig ")
        skipping = line.startswith(b"gpgsig") and not in_signature
        if in_signature:
            signature.append(line[len(b"gpgsig ") :])
        elif not skipping:
            kept.append(line)
            name, _, value = line.partition(b" ")
            fields.setdefault(name, value)
    payload = b"\n".join(kept) + separator + message
    return RawCommit(
        commit,
        payload,
        b"".join(part + b"\n" for part in signature) if signature else None,
        _email(fields.get(b"author", b"")),
        _subject(message),
        _timestamp(fields.get(b"committer", b"")),
    )


def _email(identity: bytes) -> str:
    start, end = identity.find(b"<"), identity.rfind(b">")
    text = identity[start + 1 : end] if 0 <= start < end else b""
    return text.decode("utf-8", "replace")


def _subject(message: bytes) -> str:
    paragraph = message.strip(b"\n").split(b"\n\n", 1)[0]
    return " ".join(paragraph.decode("utf-8", "replace").split("\n")).strip()


def _timestamp(identity: bytes) -> datetime:
    """The committer date (seconds after the last ``>``), clamped to what ssh-keygen reads."""
    try:
        seconds = int(identity[identity.rfind(b">") + 1 :].split()[0])
        when = datetime.fromtimestamp(seconds, tz=UTC)
    except (ValueError, IndexError, OverflowError, OSError):
        return EARLIEST
    return min(max(when, EARLIEST), LATEST)


def read_commits(repo: GitRepo, commits: Iterable[str]) -> dict[str, RawCommit]:
    """The named commit objects, read by one ``git cat-file --batch``."""
    wanted = list(dict.fromkeys(commits))
    found = {}
    for sha, obj in zip(wanted, read_objects(repo, wanted), strict=True):
        if obj is None or obj.kind != "commit":
            raise PtmError(f"{sha[:12]} is not a commit in {repo.path}")
        found[sha] = parse_commit(sha, obj.data)
    return found


# -- verifying -------------------------------------------------------------------------------


def verify_task(
    repo: GitRepo, head: str, task_id: str, allowed_signers: Path, *, at: datetime
) -> tuple[CommitSignature, ...]:
    """The checks of every commit of ``task_commits`` (newest first, so the last one is the
    commit that added the task), each verified as of ``at``."""
    listed = task_commits(repo, head, task_id)
    return verify_path_commits(repo, listed, allowed_signers, at=at)


def verify_cancel(
    repo: GitRepo, head: str, task_id: str, allowed_signers: Path, *, at: datetime | None
) -> tuple[CommitSignature, ...]:
    """The checks of the commits behind ``tasks/<id>/cancel.yaml`` as it is at ``head`` (newest
    first): every commit that changed it since it last appeared, as of ``at`` (None: each
    commit's committer date). Pass them to ``cancel_signer_ok``."""
    listed = path_commits(repo, head, f"{TASKS_DIR}/{task_id}/{CANCEL_FILE}")
    present = repo.list_tree(head, f"{TASKS_DIR}/{task_id}/{CANCEL_FILE}")
    if not present:
        return ()
    since = _since_last_appearance(repo, listed, f"{TASKS_DIR}/{task_id}/{CANCEL_FILE}")
    return verify_path_commits(repo, since, allowed_signers, at=at)


def _since_last_appearance(
    repo: GitRepo, listed: Sequence[PathCommit], path: str
) -> tuple[PathCommit, ...]:
    kept = []
    for commit in listed:
        if not repo.list_tree(commit.commit, path):
            break  # this commit removed it: what came before does not stand behind it
        kept.append(commit)
    return tuple(kept)


def verify_path_commits(
    repo: GitRepo, listed: Sequence[PathCommit], allowed_signers: Path, *, at: datetime | None
) -> tuple[CommitSignature, ...]:
    checks = verify_commits(repo, [(c.commit, at) for c in listed], allowed_signers)
    return tuple(
        _as_merge(check) if commit.merge else check
        for commit, check in zip(listed, checks, strict=True)
    )


def _as_merge(check: CommitSignature) -> CommitSignature:
    return replace(check, merge=True)


def verify_commits(
    repo: GitRepo, requests: Sequence[tuple[str, datetime | None]], allowed_signers: Path
) -> list[CommitSignature]:
    """Verify each ``(commit, time)``; a time of None means the commit's own committer date
    (what git does; only for reports that have nothing better). One ``git cat-file`` reads all
    commit objects; each signed commit costs one or two ``ssh-keygen`` runs, unsigned ones
    none. A naive ``datetime`` is taken as UTC."""
    if not allowed_signers.is_file():
        raise ConfigError(f"{allowed_signers}: the allowed signers file cannot be read")
    raws = read_commits(repo, (sha for sha, _ in requests))
    with tempfile.TemporaryDirectory(prefix="ptm-signatures-") as tmp:
        folder = Path(tmp)

        def check(request: tuple[str, datetime | None]) -> CommitSignature:
            raw = raws[request[0]]
            return verify_raw(raw, allowed_signers, request[1] or raw.committed_at, folder)

        signed = sum(1 for sha, _ in requests if raws[sha].signature is not None)
        if signed <= 1:
            return [check(request) for request in requests]
        with ThreadPoolExecutor(max_workers=min(VERIFY_WORKERS, signed)) as pool:
            return list(pool.map(check, requests))


def verify_raw(
    raw: RawCommit, allowed_signers: Path, at: datetime, folder: Path
) -> CommitSignature:
    stamp = verify_time(at)
    if raw.signature is None:
        return _check(raw, "N", stamp)
    if not raw.signature.startswith(SSH_SIGNATURE):
        return _check(raw, "E", stamp, detail="signed, but not with an SSH key (gpg.format ssh)")
    payload = raw.payload
    signature_file = folder / f"{raw.commit}-{stamp}.sig"
    signature_file.write_bytes(raw.signature)
    common = ["-s", str(signature_file), "-O", f"verify-time={stamp}"]
    code, out, err = _ssh_keygen(
        ["-Y", "find-principals", "-f", str(allowed_signers), *common], None
    )
    if code == 0:
        return _verify_principals(raw, allowed_signers, common, out.splitlines(), payload, stamp)
    return _unknown_key(raw, signature_file, payload, err, stamp)


def _verify_principals(
    raw: RawCommit,
    allowed_signers: Path,
    common: list[str],
    principals: list[str],
    payload: bytes,
    stamp: str,
) -> CommitSignature:
    err = ""
    for principal in (p for p in principals if p.strip()):
        verify = ["-Y", "verify", "-n", NAMESPACE, "-f", str(allowed_signers), "-I", principal]
        code, out, err = _ssh_keygen([*verify, *common], payload)
        if code == 0:
            return _check(raw, "G", stamp, signer=principal, key=_key_of(out))
    return _check(raw, "B", stamp, detail=f"bad signature ({_first_line(err)})")


def _unknown_key(
    raw: RawCommit, signature_file: Path, payload: bytes, err: str, stamp: str
) -> CommitSignature:
    """No principal of the file may sign at ``stamp``: which of the reasons is it?"""
    novalidate = ["-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(signature_file)]
    code, out, novalidate_err = _ssh_keygen(novalidate, payload)
    if code != 0:
        return _check(raw, "B", stamp, detail=f"bad signature ({_first_line(novalidate_err)})")
    key = _key_of(out)
    when = _readable(stamp)
    if "key has expired" in err:
        detail = f"signed by a key whose allowed signers entry expired before {when} (valid-before)"
        return _check(raw, "Y", stamp, key=key, detail=detail)
    if "not yet valid" in err:
        detail = f"signed by a key whose allowed signers entry is not valid yet at {when} "
        return _check(raw, "Y", stamp, key=key, detail=detail + "(valid-after)")
    return _check(raw, "U", stamp, key=key)


def _ssh_keygen(args: list[str], stdin: bytes | None) -> tuple[int, str, str]:
    """Run ssh-keygen (the payload as bytes: a commit need not be UTF-8), within a deadline."""
    command = ["ssh-keygen", *args]
    try:
        done = run_bounded(command, cwd=None, env=os.environ, stdin=stdin, timeout=SSH_KEYGEN_LIMIT)
    except OSError as exc:
        raise PtmError(
            f"ssh-keygen is needed to verify signatures and could not run: {exc}"
        ) from exc
    return (
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


def _check(
    raw: RawCommit, status: str, stamp: str, *, signer: str = "", key: str = "", detail: str = ""
) -> CommitSignature:
    return CommitSignature(
        raw.commit,
        status,
        signer,
        key,
        raw.author,
        raw.subject,
        detail=detail,
        verified_at=_readable(stamp),
    )


def verify_time(at: datetime) -> str:
    """``YYYYMMDDHHMMSSZ`` in UTC, as ``ssh-keygen -O verify-time=`` reads it."""
    moment = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return moment.strftime("%Y%m%d%H%M%SZ")


def _readable(stamp: str) -> str:
    return datetime.strptime(stamp, "%Y%m%d%H%M%SZ").strftime("%Y-%m-%dT%H:%M:%SZ")


def _key_of(output: str) -> str:
    """The fingerprint in ``Good "git" signature … with ED25519 key SHA256:…``."""
    words = output.split()
    return words[words.index("key") + 1] if "key" in words[:-1] else ""


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].strip() if lines else "ssh-keygen said nothing"


# -- who may cancel ---------------------------------------------------------------------------


def cancel_signer_ok(
    checks: Sequence[SignatureCheck], submitted_by: str | None, trusted_cancellers: Sequence[str]
) -> str | None:
    """None when every commit behind a ``cancel.yaml`` (``verify_cancel``) is signed by the
    task's verified submitter or a principal of ``policy.trusted_cancellers``; else why not."""
    if not checks:
        return "no commit that added cancel.yaml was found to verify"
    allowed = {*trusted_cancellers, *([submitted_by] if submitted_by else [])}
    for check in checks:
        where = f"cancel.yaml was changed by {commit_label(check)}"
        if not check.good:
            return f"{where}: {check.describe()}"
        if check.signer not in allowed:
            who = f"the task's submitter {submitted_by!r}" if submitted_by else "its submitter"
            return (
                f"{where}: signed by {check.signer!r}, who is neither {who} nor listed in "
                "policy.trusted_cancellers"
            )
    return None
