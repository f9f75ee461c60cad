"""A task registry: a git repository with ``registry.yaml`` and ``tasks/`` on its tasks branch."""

from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ptm import __version__
from ptm.errors import PtmError, RegistryError
from ptm.gitrepo import GitLimits, GitRepo, signing_config
from ptm.schema import load_document, problems_in

REGISTRY_FILE = "registry.yaml"
TASKS_DIR = "tasks"
DEFAULT_BRANCH = "main"
PUSH_ATTEMPTS = 6
DISTRIBUTION = "ptm-health-train"
# Files of the template that name the tasks branch or the ptm the registry's CI installs.
TEMPLATED_FILES = (
    "README.md",
    ".github/workflows/ptm-validate.yml",
    ".gitlab-ci.yml",
    ".pre-commit-config.yaml",
)
_TASKS_BRANCH_LINE = re.compile(r"^tasks_branch: .*$", re.MULTILINE)
_REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:/@=<>!~,#\[\]-]{0,299}")


def template_dir() -> Path:
    """The registry skeleton shipped with ptm (``registry-template/`` in the source tree)."""
    return Path(str(resources.files("ptm.registry_template")))


def ssh_environment(ssh_key: Path | None, known_hosts: Path | None = None) -> dict[str, str]:
    """``GIT_SSH_COMMAND`` for a deploy key and/or a pinned known_hosts file ({} for neither).

    It starts from the admin's own ``GIT_SSH_COMMAND`` (else ``ssh``) and adds options, so a
    ProxyJump or port set there still applies; ``core.sshCommand`` is overridden when ptm sets
    one (git prefers the variable), so put such settings in ``GIT_SSH_COMMAND`` or
    ``~/.ssh/config``. Paths are quoted for the shell and for ssh, and ``%`` is doubled (ssh
    expands ``%`` tokens in IdentityFile and UserKnownHostsFile).
    """
    options: list[str] = []
    if ssh_key is not None:
        # IdentityFile, not -i: ssh drops an -i path containing % (it checks the raw path).
        options += ["-o", f'IdentityFile="{_ssh_path(ssh_key)}"', "-o", "IdentitiesOnly=yes"]
    if known_hosts is not None:
        # ssh splits UserKnownHostsFile at spaces (it takes a list): quote the one path.
        options += ["-o", f'UserKnownHostsFile="{_ssh_path(known_hosts)}"']
        options += ["-o", "StrictHostKeyChecking=yes"]
    if not options:
        return {}
    options += [
        "-o",
        "BatchMode=yes",
        *GitLimits.from_environment(os.environ).ssh_options().split(),
    ]
    base = os.environ.get("GIT_SSH_COMMAND") or "ssh"
    command = " ".join([base, *(shlex.quote(option) for option in options)])
    return {"GIT_SSH_COMMAND": command}


def _ssh_path(path: Path) -> str:
    """A path for an ssh option that expands ``%`` tokens (IdentityFile, UserKnownHostsFile)."""
    return str(path).replace("%", "%%")


@dataclass(frozen=True)
class CreatedRegistry:
    path: Path
    branch: str
    signed: bool


def init_registry(
    path: Path,
    *,
    bare: bool,
    branch: str = DEFAULT_BRANCH,
    sign_key: Path | None = None,
    ptm_requirement: str | None = None,
) -> CreatedRegistry:
    """Create a registry at ``path`` from the template; a bare one gets the template committed.

    ``registry.yaml``, both CI files and the README name ``branch``; the CI files install
    ``ptm_requirement`` (default: this ptm's version, pinned). The first commit is signed when
    ``sign_key`` (or git's own signing config) allows, so that the registry's origin is signed.
    """
    path = path.absolute()
    values = _template_values(branch, ptm_requirement)
    if path.exists() and any(path.iterdir()):
        raise PtmError(f"{path}: exists and is not empty; a registry needs a new folder")
    path.mkdir(parents=True, exist_ok=True)
    if not bare:
        repo = _init_worktree(path, branch, sign_key, values)
        return CreatedRegistry(path, branch, _head_signed(repo))
    GitRepo(path).run("init", "--quiet", "--bare", f"--initial-branch={branch}", str(path))
    with tempfile.TemporaryDirectory(prefix="ptm-init-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        repo = _init_worktree(work, branch, sign_key, values)
        repo.run("push", "--quiet", str(path), f"HEAD:refs/heads/{branch}")
        return CreatedRegistry(path, branch, _head_signed(repo))


def _template_values(branch: str, ptm_requirement: str | None) -> dict[str, str]:
    document = {"ptm": 1, "name": "new registry", "tasks_branch": branch}
    problems = problems_in(document, "registry", source="--branch")
    if problems:
        raise PtmError(f"--branch {branch!r}: not a usable branch name ({problems[0].message})")
    requirement = ptm_requirement or f"{DISTRIBUTION}=={__version__}"
    if not _REQUIREMENT.fullmatch(requirement):
        raise PtmError(
            f"--ptm-requirement {requirement!r}: expected a pip requirement such as "
            f"{DISTRIBUTION}=={__version__} or git+https://host/ptm.git@v{__version__}"
        )
    return {"@TASKS_BRANCH@": branch, "@PTM_REQUIREMENT@": requirement}


def _init_worktree(
    path: Path, branch: str, sign_key: Path | None, values: dict[str, str]
) -> GitRepo:
    repo = GitRepo(path)
    repo.run("init", "--quiet", f"--initial-branch={branch}", str(path))
    shutil.copytree(template_dir(), path, dirs_exist_ok=True, ignore=_skip_python_files)
    for name in TEMPLATED_FILES:
        text = (path / name).read_text(encoding="utf-8")
        for marker, value in values.items():
            text = text.replace(marker, value)
        (path / name).write_text(text, encoding="utf-8")
    # registry.yaml names the default branch, not a marker, so the template itself validates
    document = (path / REGISTRY_FILE).read_text(encoding="utf-8")
    document = _TASKS_BRANCH_LINE.sub(f'tasks_branch: "{branch}"', document)
    (path / REGISTRY_FILE).write_text(document, encoding="utf-8")
    commit(repo, ["."], "Create registry from the ptm template", sign_key=sign_key)
    return repo


def _head_signed(repo: GitRepo) -> bool:
    return "gpgsig" in repo.run("cat-file", "commit", "HEAD")


def _skip_python_files(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in {"__pycache__", "__init__.py"} or n.endswith(".pyc")}


def find_registry_root(start: Path) -> Path:
    """The working tree above ``start`` (inclusive) that holds ``registry.yaml``."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / REGISTRY_FILE).is_file() and (folder / ".git").exists():
            return folder
    raise PtmError(
        f"{start}: not inside a registry clone (no {REGISTRY_FILE} in a git working tree "
        "here or above); clone the registry first, or pass --registry DIR"
    )


def clone(
    url: str,
    dest: Path,
    *,
    branch: str,
    ssh_key: Path | None = None,
    checkout: bool = True,
    known_hosts: Path | None = None,
) -> GitRepo:
    dest.parent.mkdir(parents=True, exist_ok=True)
    env = ssh_environment(ssh_key, known_hosts)
    repo = GitRepo(dest.parent, env=env)
    no_checkout = [] if checkout else ["--no-checkout"]
    repo.run("clone", "--quiet", *no_checkout, "--branch", branch, "--", url, str(dest))
    return GitRepo(dest, env=env)


def signing_options(repo: GitRepo, sign_key: Path | None) -> tuple[dict[str, str], bool]:
    """(git -c options, sign?) from an explicit key, or from the user's own git config."""
    if sign_key is not None:
        if not sign_key.is_file():
            raise PtmError(f"{sign_key}: signing key not found")
        return signing_config(sign_key), True
    configured = repo.config_value("user.signingkey")
    ssh_format = (repo.config_value("gpg.format") or "").lower() == "ssh"
    return {}, bool(configured and ssh_format)


def commit(
    repo: GitRepo,
    paths: list[str],
    message: str,
    *,
    sign_key: Path | None,
    allow_empty: bool = False,
) -> str:
    """Commit exactly ``paths`` (signed when a key is known); return the new commit's sha."""
    config, sign = signing_options(repo, sign_key)
    repo.run("add", "--all", "--", *paths)
    args = ["commit", "--quiet", "-m", message, "--gpg-sign" if sign else "--no-gpg-sign"]
    if allow_empty:
        args.append("--allow-empty")
    repo.run(*args, "--", *paths, config=config)
    return repo.run("rev-parse", "HEAD")


def push_with_rebase(
    repo: GitRepo,
    branch: str,
    *,
    sign_key: Path | None,
    remote: str = "origin",
    attempts: int = PUSH_ATTEMPTS,
    on_retry: Callable[[int, str], None] | None = None,
) -> None:
    """Push HEAD to ``remote/branch``; when someone pushed first, rebase onto theirs and retry."""
    config, sign = signing_options(repo, sign_key)
    for attempt in range(1, attempts + 1):
        try:
            repo.run("push", "--quiet", remote, f"HEAD:refs/heads/{branch}")
            return
        except RegistryError as exc:
            if attempt == attempts or not _is_rejected_push(str(exc)):
                raise
            if on_retry is not None:
                on_retry(attempt, "the registry moved on; rebasing onto it and trying again")
        time.sleep(min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.5))
        repo.run("fetch", "--quiet", remote, branch)
        with _abort_rebase_on_failure(repo):
            signing = ["--gpg-sign"] if sign else []
            repo.run("rebase", "--quiet", *signing, f"{remote}/{branch}", config=config)


def _is_rejected_push(message: str) -> bool:
    markers = (
        "[rejected]",
        "non-fast-forward",
        "fetch first",
        "Updates were rejected",
        "failed to update ref",
        "stale",
    )
    return any(m in message for m in markers) or "cannot lock ref" in message


@contextmanager
def _abort_rebase_on_failure(repo: GitRepo) -> Iterator[None]:
    try:
        yield
    except RegistryError as exc:
        repo.succeeds("rebase", "--abort")
        raise RegistryError(
            "your commit conflicts with what others pushed to the registry meanwhile "
            f"(was the same task id submitted twice?); nothing was pushed.\n{exc}"
        ) from exc


def tasks_branch(root: Path) -> str:
    """The branch that holds the tasks, from registry.yaml (``tasks_branch``) or the default."""
    document = load_document(root / REGISTRY_FILE, "registry", source=REGISTRY_FILE)
    branch = document.get("tasks_branch", DEFAULT_BRANCH)
    return str(branch)
