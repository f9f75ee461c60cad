"""The sites a registry lists (``sites/<site>.yaml``) and the registry-level checks they allow.

A task naming a site that no agent watches would wait forever, so once a registry lists its
sites, ``ptm validate`` (and so the registry's CI) and ``ptm task submit`` refuse a task naming
any other, with the closest listed name. A registry that lists no site yet is not checked: it
is still being set up. The listed public keys are what an auditor needs to check result
signatures (``ptm registry signers``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ptm.errors import InvalidDocument, Problem
from ptm.registry import TASKS_DIR
from ptm.schema import load_document
from ptm.task import TASK_FILE

SITES_DIR = "sites"
SITE_SUFFIX = ".yaml"
EVERY_SITE = "*"


@dataclass(frozen=True)
class SiteEntry:
    name: str
    contact: str | None
    principal: str
    public_key: str | None

    def allowed_signers_line(self) -> str | None:
        """This site's line of git's allowed-signers format, or None without a public key."""
        if self.public_key is None:
            return None
        kind, key, *_ = self.public_key.split()
        return f'{self.principal} namespaces="git" {kind} {key}'


@dataclass(frozen=True)
class SiteList:
    entries: tuple[SiteEntry, ...]
    problems: tuple[Problem, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(entry.name for entry in self.entries)


def load_sites(root: Path) -> SiteList:
    """Every ``sites/*.yaml`` of a registry tree, checked; broken ones become problems."""
    folder = root / SITES_DIR
    if folder.is_symlink() or not folder.is_dir():
        return SiteList((), ())
    entries: list[SiteEntry] = []
    problems: list[Problem] = []
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(SITE_SUFFIX):
            continue
        source = f"{SITES_DIR}/{path.name}"
        try:
            document = load_document(path, "site-entry", source=source)
        except InvalidDocument as exc:
            problems += exc.problems
            continue
        expected = path.name.removesuffix(SITE_SUFFIX)
        if document["name"] != expected:
            message = f"is {document['name']!r}, but the file is {path.name}: they must agree"
            problems.append(Problem(source, "name", "site-file-name", message))
            continue
        entries.append(_entry(document))
    return SiteList(tuple(entries), tuple(problems))


def _entry(document: dict[str, object]) -> SiteEntry:
    name = str(document["name"])
    contact, key = document.get("contact"), document.get("public_key")
    return SiteEntry(
        name=name,
        contact=str(contact) if contact is not None else None,
        principal=str(document.get("principal") or f"ptm-agent@{name}"),
        public_key=str(key) if key is not None else None,
    )


def unknown_site_problems(
    task_sites: Sequence[str], known: Sequence[str], *, source: str
) -> list[Problem]:
    """A problem per requested site the registry does not list (none while it lists none)."""
    if not known:
        return []
    problems = []
    for index, site in enumerate(task_sites):
        if site == EVERY_SITE or site in known:
            continue
        close = difflib.get_close_matches(site, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(known[:10]) + (", …" if len(known) > 10 else "")
        message = f"{site!r} is not a site of this registry (sites/: {listed}){hint}"
        problems.append(Problem(source, f"sites[{index}]", "known-site", message))
    return problems


def registry_site_problems(root: Path, task_dirs: Iterable[Path] | None = None) -> list[Problem]:
    """Broken ``sites/*.yaml`` and tasks (all, or ``task_dirs``) naming an unlisted site."""
    sites = load_sites(root)
    problems = list(sites.problems)
    if task_dirs is None:
        tasks = root / TASKS_DIR
        task_dirs = sorted(tasks.iterdir()) if tasks.is_dir() and not tasks.is_symlink() else []
    for folder in task_dirs:
        problems += task_site_problems(folder, sites.names)
    return problems


def task_site_problems(task_dir: Path, known: Sequence[str]) -> list[Problem]:
    source = f"{TASKS_DIR}/{task_dir.name}/{TASK_FILE}"
    path = task_dir / TASK_FILE
    if not known or task_dir.is_symlink() or not path.is_file() or path.is_symlink():
        return []
    try:
        document = load_document(path, "task", source=source)
    except InvalidDocument:
        return []  # the task's own check reports why
    return unknown_site_problems(list(document["sites"]), known, source=source)
