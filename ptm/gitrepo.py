"""The only module that runs git.

Every call runs one short-lived ``git`` process (through ``process.run_bounded``); no helper
process outlives a call, which is what lets the agent run for months without leaking processes.
Every call also has a deadline, so a registry that accepts a connection and then says nothing
cannot freeze its caller: an overall limit per call, and for the network a connect limit and an
inactivity limit (ssh's ConnectTimeout and ServerAlive*, curl's low-speed limit for http(s)).
An admin's own ssh command (``GIT_SSH_COMMAND``, ``GIT_SSH``, ``core.sshCommand``) is used as is.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ptm import process
from ptm.errors import CommandTimedOut, ConfigError, RegistryError

LIMIT_VARIABLES = {
    "call": "PTM_GIT_TIMEOUT",
    "connect": "PTM_GIT_CONNECT_TIMEOUT",
    "inactivity": "PTM_GIT_INACTIVITY_TIMEOUT",
}
TIMEOUT_MARKERS = ("timed out", "Operation too slow", "Timeout, server", "not responding")


@dataclass(frozen=True)
class GitLimits:
    """Seconds: ``call`` for any git command from start to end, ``connect`` to reach a
    registry, ``inactivity`` for a registry that stops sending or answering."""

    call: float = 600.0
    connect: float = 20.0
    inactivity: float = 60.0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> GitLimits:
        values = {field: _seconds(environ, name) for field, name in LIMIT_VARIABLES.items()}
        return cls(**{field: value for field, value in values.items() if value is not None})

    def ssh_options(self) -> str:
        """``ssh`` options that end a silent connection: connect, then keep-alive probes."""
        interval = max(1, round(self.inactivity / 4))
        count = max(1, round(self.inactivity / interval))
        return (
            f"-o ConnectTimeout={max(1, round(self.connect))} "
            f"-o ServerAliveInterval={interval} -o ServerAliveCountMax={count}"
        )

    def describe(self) -> str:
        return (
            f"connect {self.connect:g} s, inactivity {self.inactivity:g} s, "
            f"overall {self.call:g} s per git call"
        )


def _seconds(environ: Mapping[str, str], name: str) -> float | None:
    text = environ.get(name)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"environment variable {name}={text!r}: must be a number of seconds > 0")
    return value


def deadline_environment(environ: Mapping[str, str], limits: GitLimits) -> dict[str, str]:
    """What to add to git's environment ``environ`` so that network calls end when silent."""
    extra = {
        "GIT_HTTP_LOW_SPEED_LIMIT": "1",
        "GIT_HTTP_LOW_SPEED_TIME": str(max(1, round(limits.inactivity))),
    }
    if not ({"GIT_SSH_COMMAND", "GIT_SSH"} & environ.keys()) and not admin_ssh_command():
        extra["GIT_SSH_COMMAND"] = f"ssh {limits.ssh_options()}"
    return {key: value for key, value in extra.items() if key not in environ}


@functools.cache
def admin_ssh_command() -> bool:
    """Whether the system or user git config names its own ssh command (asked once)."""
    env = {**os.environ, "LC_ALL": "C", "LANGUAGE": "C"}
    try:
        done = process.run_bounded(
            ["git", "config", "--get", "core.sshCommand"], cwd="/", env=env, timeout=10
        )
    except (OSError, CommandTimedOut):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


@dataclass(frozen=True)
class SignatureCheck:
    """What git says of one commit's signature (``%G?``, ``%GS``, ``%GK``)."""

    commit: str
    status: str
    signer: str
    key: str
    author: str
    subject: str

    @property
    def good(self) -> bool:
        return self.status == "G"

    def describe(self) -> str:
        return describe_signature_status(self.status)


SIGNATURE_MEANINGS = {
    "G": "good signature",
    "B": "bad signature",
    "U": "signed by a key that is not in the allowed signers file",
    "X": "good signature that has expired",
    "Y": "good signature made by an expired key",
    "R": "good signature made by a revoked key",
    "E": "signature cannot be checked (key not in the allowed signers file?)",
    "N": "no signature",
}


def describe_signature_status(status: str) -> str:
    """What git's ``%G?`` letter means, in words."""
    return SIGNATURE_MEANINGS.get(status, f"signature status {status!r}")


@dataclass(frozen=True)
class FileChange:
    """One entry of ``git diff --name-status``: A, M, D, T (renames are split into D and A)."""

    status: str
    path: str


class GitRepo:
    """A git repository (working tree or bare) at ``path``; each method runs one git command."""

    def __init__(
        self,
        path: Path,
        *,
        env: Mapping[str, str] | None = None,
        limits: GitLimits | None = None,
    ) -> None:
        self.path = path
        self._env = dict(env or {})
        self._limits = limits

    def run(
        self,
        *args: str,
        config: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        strip: bool = True,
    ) -> str:
        output = self._execute(args, config, env).decode("utf-8", "surrogateescape")
        return output[:-1] if strip and output.endswith("\n") else output

    def run_bytes(self, *args: str) -> bytes:
        return self._execute(args, None, None)

    def run_with_input(
        self, *args: str, stdin: bytes, env: Mapping[str, str] | None = None
    ) -> bytes:
        """Run a git command that reads ``stdin`` (``cat-file --batch``…); return raw stdout."""
        return self._execute(args, None, env, stdin=stdin)

    def write_blobs(
        self, files: Mapping[str, bytes], paths: Mapping[str, Path], *, staging: Path
    ) -> dict[str, str]:
        """Write the blobs of ``files`` (path -> bytes) and ``paths`` (path -> a file) with one
        ``hash-object``; the blob of each path. The bytes go through files in ``staging`` (a
        folder of this repository's, made and removed here); a file name with a newline gets a
        call of its own."""
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        try:
            sources = dict(paths)
            for n, (path, data) in enumerate(files.items()):
                sources[path] = staging / str(n)
                sources[path].write_bytes(data)
            batch = [p for p, source in sources.items() if "\n" not in str(source)]
            blobs: dict[str, str] = {}
            if batch:
                listed = "".join(f"{sources[p]}\n" for p in batch).encode()
                out = self.run_with_input(
                    "hash-object", "-w", "--no-filters", "--stdin-paths", stdin=listed
                )
                blobs = dict(zip(batch, out.decode().split(), strict=True))
            for path, source in sources.items():
                if path not in blobs:
                    data = source.read_bytes()
                    out = self.run_with_input("hash-object", "-w", "--stdin", stdin=data)
                    blobs[path] = out.decode().strip()
            return {p: blobs[p] for p in [*files, *paths]}
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _execute(
        self,
        args: Sequence[str],
        config: Mapping[str, str] | None,
        env: Mapping[str, str] | None,
        *,
        stdin: bytes | None = None,
    ) -> bytes:
        command, full_env, limits = self._prepare(args, config, env)
        try:
            done = process.run_bounded(
                command, cwd=_usable(self.path), env=full_env, stdin=stdin, timeout=limits.call
            )
        except CommandTimedOut as exc:
            raise RegistryError(_describe_timeout(command, exc, limits)) from exc
        except OSError as exc:
            raise RegistryError(f"git could not run in {self.path}: {exc}") from exc
        if done.returncode != 0:
            raise RegistryError(_describe_failure(command, done, limits))
        return done.stdout

    def session(self, *args: str) -> process.Session:
        """A git command kept running to talk with (``cat-file --batch-command``), with one
        deadline (the limit of one call) for the whole session; RegistryError if it cannot
        start. It ends with the ``with`` block it is used in: no process outlives its caller."""
        command, full_env, limits = self._prepare(args, None, None)
        try:
            cwd = _usable(self.path)
            return process.Session(command, cwd=cwd, env=full_env, timeout=limits.call)
        except CommandTimedOut as exc:
            raise RegistryError(_describe_timeout(command, exc, limits)) from exc
        except OSError as exc:
            raise RegistryError(f"git could not run in {self.path}: {exc}") from exc

    def describe_session_error(self, session: process.Session, exc: BaseException) -> str:
        """What a message says when a session's read or write failed with ``exc``."""
        limits = self._limits or GitLimits.from_environment(os.environ)
        if isinstance(exc, CommandTimedOut):
            return _describe_timeout(session.command, exc, limits)
        return f"git stopped answering ({exc}): {' '.join(_redact(session.command))}"

    def _prepare(
        self, args: Sequence[str], config: Mapping[str, str] | None, env: Mapping[str, str] | None
    ) -> tuple[list[str], dict[str, str], GitLimits]:
        options: list[str] = []
        for key, value in (config or {}).items():
            options += ["-c", f"{key}={value}"]
        command = ["git", *options, *args]
        limits = self._limits or GitLimits.from_environment(os.environ)
        # English messages: callers recognise some of them (a rejected push, a timeout).
        base = {**os.environ, "LANGUAGE": "C", "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}
        full_env = {**base, **self._env, **(env or {})}
        full_env.update(deadline_environment(full_env, limits))
        full_env["GIT_CONFIG_PARAMETERS"] = _with_big_file_threshold(full_env)
        return command, full_env, limits

    def remove_stale_locks(self) -> None:
        """Drop ``index.lock`` left by a git killed mid-command; only for clones we own and
        hold the work directory lock for, so no other git process can be using them."""
        (self.path / ".git" / "index.lock").unlink(missing_ok=True)

    def succeeds(self, *args: str) -> bool:
        try:
            self.run(*args)
        except RegistryError:
            return False
        return True

    # ---- reading -------------------------------------------------------------------------

    def rev_parse(self, rev: str) -> str | None:
        try:
            return self.run("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        except RegistryError:
            return None

    def is_tree(self, rev: str) -> bool:
        """True when ``rev`` (e.g. ``<commit>:tasks/t1``) names a folder."""
        try:
            return self.run("cat-file", "-t", rev) == "tree"
        except RegistryError:
            return False

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.succeeds("merge-base", "--is-ancestor", older, newer)

    def changed_paths(self, old: str | None, new: str, *, under: str) -> list[FileChange]:
        if old is None:
            out = self.run("ls-tree", "-r", "-z", "--name-only", new, "--", under, strip=False)
            return [FileChange("A", p) for p in out.split("\0") if p]
        out = self.run(
            "diff", "--name-status", "--no-renames", "-z", old, new, "--", under, strip=False
        )
        return parse_name_status(out)

    def list_tree(self, rev: str, path: str) -> list[str]:
        out = self.run("ls-tree", "-r", "-z", "--name-only", rev, "--", path, strip=False)
        return [p for p in out.split("\0") if p]

    def remote_head(self, url: str, branch: str) -> str | None:
        """The branch's head on ``url``, from one ``ls-remote``. ``--heads`` makes git ask the
        host (protocol v2) for branches only, not for every tag and every forge's pull-request
        ref; a pattern alone does not narrow what the host sends."""
        out = self.run("ls-remote", "--heads", "--", url, f"refs/heads/{branch}")
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            if ref == f"refs/heads/{branch}":
                return sha
        return None

    def remote_branches(self, remote: str, prefix: str) -> dict[str, str]:
        out = self.run("ls-remote", "--heads", "--", remote, f"refs/heads/{prefix}*")
        heads: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            heads[ref.removeprefix("refs/heads/")] = sha
        return heads

    def config_value(self, key: str) -> str | None:
        try:
            return self.run("config", "--get", key) or None
        except RegistryError:
            return None


def parse_name_status(output: str) -> list[FileChange]:
    fields = [f for f in output.split("\0") if f]
    return [FileChange(fields[i][0], fields[i + 1]) for i in range(0, len(fields) - 1, 2)]


def signing_config(sign_key: Path | None) -> dict[str, str]:
    """git ``-c`` options that make ``commit -S`` sign with an SSH key file."""
    if sign_key is None:
        return {}
    return {"gpg.format": "ssh", "user.signingKey": str(sign_key)}


def _usable(path: Path) -> Path | None:
    """The folder to run git in; None (the current one) while ``path`` does not exist yet."""
    return path if os.access(path, os.X_OK) else None


def _describe_failure(command: Sequence[str], done: process.Completed, limits: GitLimits) -> str:
    stderr = done.stderr.decode("utf-8", "replace").strip()
    shown = " ".join(_redact(command))
    detail = "\n".join(f"    {line}" for line in stderr.splitlines()) or "    (no output)"
    message = f"git failed (exit {done.returncode}): {shown}\n{detail}"
    if any(marker in stderr for marker in TIMEOUT_MARKERS):
        message += f"\n    (ptm's limits for git: {limits.describe()}; {_limit_knobs()})"
    return message


def _describe_timeout(command: Sequence[str], exc: CommandTimedOut, limits: GitLimits) -> str:
    shown = " ".join(_redact(command))
    if exc.stopping:
        return f"git stopped because ptm is shutting down: {shown}"
    return (
        f"git did not finish within {limits.call:g} s (the overall limit for one git call, "
        f"{LIMIT_VARIABLES['call']}) and was stopped: {shown}\n"
        f"    (ptm's limits for git: {limits.describe()})"
    )


def _limit_knobs() -> str:
    return ", ".join(LIMIT_VARIABLES[f] for f in ("connect", "inactivity", "call")) + " set them"


def _redact(command: Sequence[str]) -> Iterator[str]:
    for part in command:
        yield "<key>" if part.startswith("user.signingKey=") else part


def clear_stale_locks(repository: Path, names: list[str]) -> None:
    """Remove lock files a killed git left (``names`` relative to the bare ``repository``), once
    no git process is working in it (git runs there, never in a folder below)."""
    present = [repository / n for n in names if (repository / n).exists()]
    if present and not _git_busy_in(repository):
        for path in present:
            path.unlink(missing_ok=True)


def _git_busy_in(folder: Path) -> bool:
    root = str(folder.resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = str((proc / "cwd").readlink())
            command = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if command.startswith("git") and (cwd == root or cwd.startswith(root + "/")):
            return True
    return False


def _with_big_file_threshold(env: Mapping[str, str]) -> str:
    """git's ``-c`` settings for every call (and the git processes it starts, which read the
    same variable): blobs over 1 MiB are streamed, never held whole, by git itself too
    (index-pack in a fetch, cat-file, hash-object), so a registry's huge blob costs git no
    more memory than it costs ptm. Settings the caller's environment has come first."""
    ours = "'core.bigFileThreshold=1m'"
    theirs = env.get("GIT_CONFIG_PARAMETERS", "").strip()
    return f"{theirs} {ours}" if theirs else ours
