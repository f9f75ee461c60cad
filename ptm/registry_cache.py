"""Clones of registries opened by URL, kept under ``$XDG_CACHE_HOME/ptm/registries/``.

One clone per URL (named after its last path part and a hash of the whole URL), created once
and then only fetched; a file lock keeps two ptm processes from cloning or updating the same
one at once. Without a usable cache folder a private temporary one is used.

A cache clone has no work tree (``git clone --no-checkout``) and is never checked out: anyone
who may push can put crafted trees on the branches, and checking one out is how a crafted tree
breaks a clone or writes through it. Everything is read from objects, through ``ptm.treecheck``
(``registry.yaml`` here; tasks and results in ``ptm.federation``), and written as commits built
from objects (``ptm.object_commits``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ptm.errors import InvalidDocument, PtmError
from ptm.gitrepo import GitRepo
from ptm.registry import DEFAULT_BRANCH, REGISTRY_FILE
from ptm.schema import MAX_DOCUMENT_BYTES, load_yaml_text, validate
from ptm.tree_paths import Wanted, locate, read_files


def cache_home() -> Path:
    """``$XDG_CACHE_HOME/ptm/registries`` (``~/.cache/ptm/registries`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ptm" / "registries"


def cache_clone_path(cache_dir: Path, url: str) -> Path:
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    last = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", last).strip("-")[:40] or "registry"
    return cache_dir / f"{slug}-{digest}"


def cache_clone(url: str, cache_dir: Path) -> Path:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError:  # no usable cache folder (read-only home…): a private temporary one
        cache_dir = Path(tempfile.mkdtemp(prefix="ptm-registries-"))
    path = cache_clone_path(cache_dir, url)
    with cache_lock(path):
        if (path / ".git").is_dir():
            return path
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        GitRepo(cache_dir).run(
            "clone", "--quiet", "--no-tags", "--no-checkout", "--", url, str(partial)
        )
        partial.rename(path)
    return path


@contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """One ptm at a time clones or updates a cache clone (git's own locks would just fail)."""
    with open(path.with_name(path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_SCP_LIKE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9._-]+:")


def looks_like_url(text: str) -> bool:
    return "://" in text or _SCP_LIKE.match(text) is not None


def is_bare_repository(path: Path) -> bool:
    return (
        (path / "HEAD").is_file() and (path / "objects").is_dir() and not (path / ".git").exists()
    )


def tasks_branch_of(repo: GitRepo, url: str) -> str:
    """The tasks branch that ``registry.yaml`` on the registry's default branch names, read
    from the cache clone's objects (never from a checkout)."""
    tip = repo.rev_parse("refs/remotes/origin/HEAD") or repo.rev_parse("HEAD")
    if tip is None:
        raise PtmError(f"{url}: not a ptm registry (it has no default branch)")
    document = registry_document(repo, tip, url=url, where="its default branch")
    return str(document.get("tasks_branch", DEFAULT_BRANCH))


def signatures_required_at(repo: GitRepo, tip: str, *, url: str) -> bool:
    """Whether ``registry.yaml`` at commit ``tip`` (the fetched tasks branch, which a submit
    or cancel builds on) says the sites run only signed tasks, read from objects."""
    document = registry_document(repo, tip, url=url, where="its tasks branch")
    return bool(document.get("require_signed_tasks", False))


def registry_document(repo: GitRepo, tip: str, *, url: str, where: str) -> dict[str, Any]:
    """``registry.yaml`` of commit ``tip``, located through ptm.tree_paths (entries checked,
    size capped) and validated; PtmError naming ``url`` when it is missing or broken."""
    entry = locate(repo, {0: Wanted(tip, (REGISTRY_FILE,), "")})
    data = read_files(repo, entry, {0: REGISTRY_FILE}, max_bytes=MAX_DOCUMENT_BYTES)[0]
    if not isinstance(data, bytes):
        why = f": {data}" if data is not None else ""
        raise PtmError(f"{url}: not a ptm registry (no {REGISTRY_FILE} on {where}{why})")
    source = f"{url}:{REGISTRY_FILE}"
    try:
        document = load_yaml_text(data, source=source)
        validate(document, "registry", source=source)
    except InvalidDocument as exc:
        raise PtmError(f"{url}: not a ptm registry: {exc}") from exc
    return document
