"""ptm policy explain TASK --config FILE"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from ptm.console import print_json, say
from ptm.encryption import EncryptionError
from ptm.judgement import Judgement, judge_at
from ptm.sealed import encryption_wanted, result_recipients
from ptm.site_repos import tasks_mirror
from ptm.siteconfig import SiteConfig, load_site_config


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("policy", help="what a site's policy says of a task")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    explain = actions.add_parser(
        "explain",
        help="would this site run TASK, and every reason why not",
        description="Judge TASK as it is now on the registry's tasks branch with the same code "
        "the agent uses, without running anything. Exit 0 when the site would run it, 1 when "
        "it would refuse it (every reason is listed).",
    )
    explain.add_argument("task_id", metavar="TASK", help="a task on the registry's tasks branch")
    explain.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="the site config to judge with"
    )
    explain.add_argument("--json", action="store_true", help="print the verdict as JSON")
    explain.set_defaults(handler=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    config = load_site_config(args.config)
    with tempfile.TemporaryDirectory(prefix="ptm-explain-") as tmp:
        mirror = tasks_mirror(config, Path(tmp) / "registry")
        mirror.ensure_clone()
        head = mirror.fetch()
        if args.task_id.encode() not in mirror.index(head).entries:
            say(
                f"task {args.task_id!r} is not on branch {config.registry.branch} of "
                f"{config.registry.url}"
            )
            return 1
        verdict = judge_at(mirror, config, args.task_id, head)
    failure = _failure_before_running(verdict, config)
    if args.json:
        print_json(_document(verdict, config.site, failure))
    else:
        _print(verdict, config.site, failure)
    return 0 if verdict.decision.accepted and failure is None else 1


def _failure_before_running(verdict: Judgement, config: SiteConfig) -> str | None:
    """Why an accepted task would still fail before its container starts (None: it would
    not): results that must be encrypted and no key to encrypt them to."""
    if verdict.task is None or not verdict.decision.accepted:
        return None
    if not encryption_wanted(verdict.task, config):
        return None
    try:
        result_recipients(config, verdict.decision.submitted_by)
    except EncryptionError as exc:
        return str(exc)
    return None


def _document(verdict: Judgement, site: str, failure: str | None) -> dict[str, Any]:
    decision = verdict.decision
    return {
        "task": verdict.task_id,
        "site": site,
        "would_run": decision.accepted and failure is None,
        "would_fail": failure,
        "for_this_site": decision.for_this_site,
        "reasons": list(decision.reasons),
        "submitted_by": decision.submitted_by,
        "needs_approval": decision.needs_approval,
        "task_commit": verdict.task_commit,
    }


def _print(verdict: Judgement, site: str, failure: str | None) -> None:
    decision = verdict.decision
    if decision.accepted and failure is not None:
        say(f"{site} would accept task {verdict.task_id}, but it would fail before running:")
        say(f"  - {failure}")
    elif decision.accepted:
        approval = (
            " after an admin approves it (policy.approval: manual)"
            if decision.needs_approval
            else ""
        )
        say(f"{site} would run task {verdict.task_id}{approval}.")
    elif not decision.for_this_site:
        say(f"{site} would ignore task {verdict.task_id}: {decision.summary()}.")
    else:
        say(f"{site} would refuse task {verdict.task_id}:")
        for reason in decision.reasons:
            say(f"  - {reason}")
    if decision.submitted_by:
        say(f"submitted by {decision.submitted_by} (verified signature)")
    say(f"task commit {verdict.task_commit[:12]}")
