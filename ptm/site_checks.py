"""``ptm agent check``: every part the agent will need later, each checked, none changed.

Each check runs even when an earlier one failed, so that an admin sees every problem at once:
the registry (reachable, the tasks branch exists), write access to ``results/<site>`` (asked of
the host with a no-op update, see ptm.push_access), each SFTP target (connect, host key, log
in, its folder), the signing key (it signs), ``allowed_signers`` (it parses, and names every
trusted submitter), the container engine, the work directory.
"""

from __future__ import annotations

import base64
import binascii
import os
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ptm import process
from ptm.errors import CommandFailed, PtmError
from ptm.gitrepo import GitRepo
from ptm.push_access import probe_push_access
from ptm.registry import ssh_environment
from ptm.siteconfig import SftpTarget, SiteConfig
from ptm.urls import redact_text, redact_url

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def to_document(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def run_checks(config: SiteConfig, *, engine_ping: Callable[[], str]) -> list[CheckResult]:
    checks: list[tuple[str, Callable[[], str]]] = [
        ("registry", lambda: check_registry(config)),
        ("push", lambda: check_push(config)),
        *((f"sftp:{name}", _sftp_check(t)) for name, t in config.sftp_targets.items()),
        ("signing_key", lambda: check_signing_key(config.signing_key)),
        ("allowed_signers", lambda: check_allowed_signers(config)),
        (config.runtime.engine, lambda: f"engine {engine_ping()} answers"),
        ("workdir", lambda: check_workdir(config.workdir)),
    ]
    return [_run_one(name, check) for name, check in checks]


def _run_one(name: str, check: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(name, True, redact_text(check()))
    except PtmError as exc:
        return CheckResult(name, False, redact_text(str(exc)))


def registry_environment(config: SiteConfig) -> dict[str, str]:
    return ssh_environment(config.registry.ssh_key, config.registry.known_hosts)


def check_registry(config: SiteConfig) -> str:
    registry = config.registry
    with tempfile.TemporaryDirectory(prefix="ptm-check-") as scratch:
        repo = GitRepo(Path(scratch), env=registry_environment(config))
        head = repo.remote_head(registry.url, registry.branch)
    if head is None:
        raise PtmError(
            f"{redact_url(registry.url)}: reachable, but has no branch {registry.branch!r} "
            "(registry.branch)"
        )
    return f"{redact_url(registry.url)} branch {registry.branch} at {head[:12]}"


def check_push(config: SiteConfig) -> str:
    probe = probe_push_access(config.registry.url, config.site, registry_environment(config))
    if probe.accepted is False:
        raise PtmError(probe.detail)
    return probe.detail


def _sftp_check(target: SftpTarget) -> Callable[[], str]:
    def check() -> str:
        from ptm.delivery import check_target  # paramiko only when a target is configured

        return check_target(target)

    return check


def check_signing_key(key: Path | None) -> str:
    """The key signs (as ``git commit -S`` will): a real signature over a scratch file."""
    if key is None:
        return "not set: result commits will not be signed (signing_key)"
    if not key.is_file():
        raise PtmError(f"{key}: signing key not found (signing_key)")
    with tempfile.TemporaryDirectory(prefix="ptm-check-") as scratch:
        probe = Path(scratch) / "probe"
        probe.write_text("ptm agent check\n")
        try:
            process.run(
                ["ssh-keygen", "-Y", "sign", "-n", "git", "-f", str(key), str(probe)],
                timeout=30,
            )
        except CommandFailed as exc:
            said = (exc.stderr.strip() or exc.stdout.strip()).splitlines()
            reason = said[-1] if said else f"exit {exc.returncode}"
            raise PtmError(f"{key}: cannot sign with this key (signing_key): {reason}") from exc
    return f"{key} signs"


def check_allowed_signers(config: SiteConfig) -> str:
    path = config.policy.allowed_signers
    if path is None:
        return "not set: task signatures are not checked (policy.allowed_signers)"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PtmError(f"{path}: cannot read the allowed signers file: {exc}") from exc
    principals, problems = parse_allowed_signers(text)
    missing = [p for p in config.policy.trusted_submitters if p not in principals]
    problems += [
        f"trusted submitter {p!r} (policy.trusted_submitters) has no key here" for p in missing
    ]
    if problems:
        raise PtmError("\n".join(f"{path}: {problem}" for problem in problems))
    return f"{path}: {len(principals)} principal(s), every trusted submitter has a key"


def parse_allowed_signers(text: str) -> tuple[set[str], list[str]]:
    """(principals, problems) of git's SSH allowed-signers format (ssh-keygen(1), ALLOWED
    SIGNERS): ``principals [options] keytype base64-key [comment]`` a line."""
    principals: set[str] = set()
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        problem = _signer_line_problem(line)
        if problem is not None:
            problems.append(f"line {number}: {problem}")
        else:
            principals.update(shlex.split(line)[0].split(","))
    return principals, problems


def _signer_line_problem(line: str) -> str | None:
    try:
        words = shlex.split(line, comments=False, posix=True)
    except ValueError as exc:
        return f"unbalanced quotes ({exc})"
    key_at = next((i for i, word in enumerate(words) if word in KEY_TYPES), None)
    if key_at is None or key_at == 0:
        return "expected 'principals [options] key-type base64-key'"
    if key_at + 1 >= len(words):
        return f"{words[key_at]} without its key"
    try:
        blob = base64.b64decode(words[key_at + 1], validate=True)
    except (binascii.Error, ValueError):
        return "the key is not valid base64"
    embedded = blob[4 : 4 + int.from_bytes(blob[:4], "big")].decode("ascii", "replace")
    if embedded != words[key_at]:
        return f"the key is a {embedded or 'damaged'} key, not {words[key_at]}"
    return None


def check_workdir(workdir: Path) -> str:
    existing = workdir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise PtmError(f"{workdir}: this user cannot write here (workdir)")
    return str(workdir) if existing == workdir else f"{workdir} (created at first start)"
