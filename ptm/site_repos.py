"""A site's two git repositories, built from its config in one place, so that every command
that reaches the registry (the agent, ``ptm policy explain``, ``ptm agent resume`` …) uses the
same URL, deploy key and pinned host key (``registry.known_hosts``)."""

from __future__ import annotations

from pathlib import Path

from ptm.ledger import Ledger
from ptm.siteconfig import SiteConfig
from ptm.sync import TasksMirror
from ptm.workdir import WorkDir


def tasks_mirror(config: SiteConfig, path: Path | None = None) -> TasksMirror:
    """The site's mirror of the tasks branch: at ``path``, by default in its work folder."""
    registry = config.registry
    return TasksMirror(
        path or WorkDir(config.workdir).tasks_clone,
        url=registry.url,
        branch=registry.branch,
        ssh_key=registry.ssh_key,
        known_hosts=registry.known_hosts,
    )


def results_ledger(config: SiteConfig) -> Ledger:
    """The site's journal of ``results/<site>`` (``WORKDIR/ledger.git``)."""
    registry = config.registry
    return Ledger(
        WorkDir(config.workdir).results_clone,
        url=registry.url,
        site=config.site,
        ssh_key=registry.ssh_key,
        sign_key=config.signing_key,
        known_hosts=registry.known_hosts,
    )
