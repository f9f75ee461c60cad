"""ptm cancel TASK: commit tasks/TASK/cancel.yaml (signed like a task) and push it."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ptm.commands.status_cmd import add_location_options, open_registry
from ptm.console import print_json, say, warn
from ptm.errors import SignatureRequired
from ptm.submission import COMMAND_OPTIONS

DEFAULT_REASON = "cancelled by the researcher"


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "cancel",
        help="cancel a task",
        description="Commit tasks/TASK/cancel.yaml (ptm: 1, reason, requested_by from git's "
        "user.email), signed like a task (--sign-key, or git's gpg.format=ssh and "
        "user.signingkey), and push it. Sites that have not finished the task stop or skip "
        "it. Unknown and already cancelled tasks are refused.",
    )
    parser.add_argument("task_id", metavar="TASK", help="the task to cancel")
    parser.add_argument("--reason", default=DEFAULT_REASON, help="why (shown to every site)")
    parser.add_argument("--sign-key", type=Path, metavar="KEY", help="SSH private key to sign with")
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="push without a signature even though registry.yaml says its sites require one "
        "(they would ignore the cancel)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_location_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    try:
        cancelled = registry.cancel(
            args.task_id,
            reason=args.reason,
            sign_key=args.sign_key,
            allow_unsigned=args.allow_unsigned,
            on_retry=lambda attempt, why: warn(f"push attempt {attempt}: {why}"),
        )
    except SignatureRequired as exc:  # the API's words name its keywords; say the flags
        raise SignatureRequired(exc.task_id, action="cancelled", options=COMMAND_OPTIONS) from None
    if args.json:
        print_json(asdict(cancelled))
        return 0
    if not cancelled.signed:
        warn(
            "the cancellation is not signed, so the registry's history does not prove who "
            "cancelled the task. Set git's gpg.format=ssh and user.signingkey, or pass "
            "--sign-key KEY."
        )
    signed = "signed" if cancelled.signed else "unsigned"
    say(
        f"Cancelled task {cancelled.task_id} ({signed} commit {cancelled.commit[:12]}); sites "
        "that have not finished it will stop or skip it."
    )
    return 0
