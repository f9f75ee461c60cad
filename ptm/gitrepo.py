"""The only module that talks to git (through GitPython's command layer).

Every call runs one short-lived ``git`` process; no ``Repo`` object, and so no persistent
``cat-file`` helper, outlives a call. That is what lets the agent run for months without leaking
processes. GitPython's exceptions are translated here into ptm's own.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import git
import git.exc

from ptm.errors import RegistryError


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

    def __init__(self, path: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.path = path
        self._env = dict(env or {})

    def run(
        self,
        *args: str,
        config: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        strip: bool = True,
    ) -> str:
        output = self._execute(args, config, env, strip=strip, as_text=True)
        assert isinstance(output, str)
        return output

    def run_bytes(self, *args: str) -> bytes:
        output = self._execute(args, None, None, strip=False, as_text=False)
        assert isinstance(output, bytes)
        return output

    def run_with_input(self, *args: str, stdin: bytes) -> bytes:
        """Run a git command that reads ``stdin`` (``cat-file --batch``…); return raw stdout."""
        # GitPython hands ``istream`` to Popen as stdin, so it must be a real file, not bytes.
        with tempfile.TemporaryFile() as stream:
            stream.write(stdin)
            stream.seek(0)
            output = self._execute(args, None, None, strip=False, as_text=False, istream=stream)
        assert isinstance(output, bytes)
        return output

    def _execute(
        self,
        args: Sequence[str],
        config: Mapping[str, str] | None,
        env: Mapping[str, str] | None,
        *,
        strip: bool,
        as_text: bool,
        istream: BinaryIO | None = None,
    ) -> str | bytes:
        options: list[str] = []
        for key, value in (config or {}).items():
            options += ["-c", f"{key}={value}"]
        command = ["git", *options, *args]
        full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **self._env, **(env or {})}
        try:
            output = git.Git(str(self.path)).execute(
                command,
                istream=istream,
                env=full_env,
                strip_newline_in_stdout=strip,
                stdout_as_string=as_text,
                with_extended_output=False,
            )
        except git.exc.GitCommandError as exc:
            raise RegistryError(_describe_failure(command, exc)) from exc
        except (git.exc.GitError, OSError) as exc:
            raise RegistryError(f"git could not run in {self.path}: {exc}") from exc
        return output if output is not None else ""

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

    def commits_touching(self, rev_range: str, path: str) -> list[str]:
        out = self.run("rev-list", "--full-history", "--no-merges", rev_range, "--", path)
        return out.split()

    def list_tree(self, rev: str, path: str) -> list[str]:
        out = self.run("ls-tree", "-r", "-z", "--name-only", rev, "--", path, strip=False)
        return [p for p in out.split("\0") if p]

    def signatures(self, commits: Sequence[str], *, allowed_signers: Path) -> list[SignatureCheck]:
        if not commits:
            return []
        out = self.run(
            "log",
            "--no-walk=unsorted",
            "-z",
            "--format=%H%x1f%G?%x1f%GS%x1f%GK%x1f%ae%x1f%s",
            *commits,
            config={"gpg.ssh.allowedSignersFile": str(allowed_signers)},
            strip=False,
        )
        return parse_signatures(out)

    def remote_head(self, url: str, branch: str) -> str | None:
        out = self.run("ls-remote", "--", url, f"refs/heads/{branch}")
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


def parse_signatures(output: str) -> list[SignatureCheck]:
    checks = []
    for record in output.split("\0"):
        record = record.strip("\n")
        if not record:
            continue
        sha, status, signer, key, author, subject = (record.split("\x1f") + [""] * 6)[:6]
        checks.append(SignatureCheck(sha, status, signer, key, author, subject))
    return checks


def signing_config(sign_key: Path | None) -> dict[str, str]:
    """git ``-c`` options that make ``commit -S`` sign with an SSH key file."""
    if sign_key is None:
        return {}
    return {"gpg.format": "ssh", "user.signingKey": str(sign_key)}


def _describe_failure(command: Sequence[str], exc: git.exc.GitCommandError) -> str:
    stderr = str(exc.stderr or "").strip().removeprefix("stderr:").strip().strip("'").strip()
    shown = " ".join(_redact(command))
    detail = "\n".join(f"    {line}" for line in stderr.splitlines()) or "    (no output)"
    return f"git failed (exit {exc.status}): {shown}\n{detail}"


def _redact(command: Sequence[str]) -> Iterator[str]:
    for part in command:
        yield "<key>" if part.startswith("user.signingKey=") else part
