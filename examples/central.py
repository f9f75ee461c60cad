"""What every central script does for one task: submit it, wait for the sites, collect.

Nothing here runs an agent or touches a site's data: the sites' agents pick the task up from
the registry on their own. ``Federation`` says where tasks go and how long to wait.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptm.api import Registry, SiteResult
from ptm.errors import PtmError

EVERY_SITE = "*"


class StudyError(PtmError):
    """A federated study cannot go on (a site failed a round, a site's output is malformed)."""


@dataclass(frozen=True)
class Federation:
    """Where a central script sends its tasks, and how it waits for them.

    ``sites`` may be ``("*",)``: every site that accepts the task. The registry cannot know who
    that is, so give ``wait_for`` (the sites to wait for); without it the wait ends as soon as
    every site that has answered so far is finished.

    Tasks are signed with ``sign_key`` (or git's own signing config); a registry whose sites run
    only signed tasks refuses unsigned ones (``SignatureRequired``) unless ``allow_unsigned``.
    """

    registry: Registry
    sites: tuple[str, ...]
    wait_for: tuple[str, ...] = ()
    sign_key: Path | None = None
    allow_unsigned: bool = False
    timeout: float = 3600.0  # seconds to wait for one task at every site
    poll_interval: float = 5.0
    results_dir: Path | None = None  # keep collected results here; None: a temporary folder

    @property
    def targets(self) -> tuple[str, ...]:
        """The sites whose results to wait for (empty: whoever answers)."""
        if self.wait_for:
            return self.wait_for
        return tuple(s for s in self.sites if s != EVERY_SITE)


def run_task(
    federation: Federation,
    task_id: str,
    *,
    image: str,
    config: Mapping[str, Any],
    description: str,
    wait_for: Sequence[str] = (),
) -> dict[str, SiteOutcome]:
    """Submit ``task_id``, wait until every targeted site is final, return each site's result.

    ``wait_for`` overrides the federation's targets (the iterative example fixes the sites
    after its first round). Raises WaitTimedOut (a PtmError) after ``federation.timeout``.
    """
    registry = federation.registry
    draft = {
        "task_id": task_id,
        "image": image,
        "sites": list(federation.sites),
        "config": dict(config),
        "description": description,
    }
    registry.submit(draft, sign_key=federation.sign_key, allow_unsigned=federation.allow_unsigned)
    targets = tuple(wait_for) or federation.targets
    registry.wait(
        task_id,
        timeout=federation.timeout,
        sites=targets,
        poll_interval=federation.poll_interval,
    )
    if federation.results_dir is not None:
        results = registry.results(task_id, federation.results_dir / task_id, sites=targets)
        return {site: SiteOutcome.read(result) for site, result in results.items()}
    with tempfile.TemporaryDirectory(prefix=f"ptm-{task_id}-") as scratch:
        results = registry.results(task_id, Path(scratch), sites=targets)
        return {site: SiteOutcome.read(result) for site, result in results.items()}


@dataclass(frozen=True)
class SiteOutcome:
    """One site's answer to one task, read into memory (outputs are small summaries)."""

    site: str
    state: str
    reason: str | None
    outputs: Mapping[str, bytes]
    log: str | None

    @classmethod
    def read(cls, result: SiteResult) -> SiteOutcome:
        outputs = {name: result.read_bytes(name) for name in result.output_files}
        reason = result.record.reason if result.record is not None else None
        return cls(result.site, result.state, reason, outputs, result.log)

    @property
    def completed(self) -> bool:
        return self.state == "completed"

    def text(self, name: str) -> str:
        if name not in self.outputs:
            raise StudyError(f"{self.site} completed but wrote no {name}")
        return self.outputs[name].decode("utf-8", errors="replace")

    def explain(self) -> str:
        """Why this site has no result: its state, reason and the end of its log."""
        why = f"{self.state}" + (f" ({self.reason})" if self.reason else "")
        tail = (self.log or "").strip().splitlines()[-3:]
        return why + "".join(f"\n    {line}" for line in tail)


def add_federation_options(parser: argparse.ArgumentParser) -> None:
    """The options every central script takes: where the registry is, which sites, waiting."""
    parser.add_argument("registry", help="registry URL, bare repository path or clone")
    parser.add_argument(
        "--site",
        action="append",
        dest="sites",
        metavar="SITE",
        help="a site to ask (repeatable); default: every site ('*')",
    )
    parser.add_argument(
        "--wait-for",
        action="append",
        default=[],
        metavar="SITE",
        help="with '*': the sites whose answers to wait for (repeatable)",
    )
    parser.add_argument("--sign-key", type=Path, help="SSH key that signs the tasks' commits")
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="submit unsigned tasks even where the registry says its sites require signatures",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait a task")
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--results-dir", type=Path, help="keep the collected results here")


def federation_from_args(args: argparse.Namespace) -> Federation:
    return Federation(
        Registry.open(args.registry),
        sites=tuple(args.sites or [EVERY_SITE]),
        wait_for=tuple(args.wait_for),
        sign_key=args.sign_key,
        allow_unsigned=args.allow_unsigned,
        timeout=args.timeout,
        poll_interval=args.poll_interval,
        results_dir=args.results_dir,
    )
