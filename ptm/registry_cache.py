"""Clones of registries opened by URL, kept under ``$XDG_CACHE_HOME/ptm/registries/``.

One clone per URL (named after its last path part and a hash of the whole URL), created once
and then only fetched; a file lock keeps two ptm processes from cloning or updating the same
one at once. Without a usable cache folder a private temporary one is used.
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

from ptm.gitrepo import GitRepo


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
        GitRepo(cache_dir).run("clone", "--quiet", "--no-tags", "--", url, str(partial))
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
