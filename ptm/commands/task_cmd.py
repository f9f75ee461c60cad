"""ptm task new | submit"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from ptm.console import print_json, say, warn
from ptm.registry import find_registry_root, tasks_branch
from ptm.submission import (
    TaskDraft,
    check_task,
    load_config_file,
    refuse_unsigned,
    submit_task,
    write_task,
)


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("task", help="write and submit tasks (researchers)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _register_new(actions)
    _register_submit(actions)


def _registry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        type=Path,
        default=Path.cwd(),
        metavar="DIR",
        help="your clone of the registry (default: the current folder or one above it)",
    )


def _register_new(actions: argparse._SubParsersAction[Any]) -> None:
    new = actions.add_parser(
        "new",
        help="write tasks/ID/task.yaml in your registry clone",
        description="Write a new task folder tasks/ID/ in a registry clone. Nothing is "
        "committed: look at it, then run 'ptm task submit ID'.",
    )
    new.add_argument("task_id", metavar="ID", help="new task id: a-z, 0-9, '.', '_', '-'")
    new.add_argument("--image", required=True, help="Docker image, e.g. org/stats:1.2 or @sha256:…")
    new.add_argument(
        "--site",
        dest="sites",
        action="append",
        required=True,
        metavar="SITE",
        help="a site that should run it; repeat for more, or '*' for every site",
    )
    new.add_argument("--config", type=Path, metavar="FILE", help="YAML given to the container")
    new.add_argument(
        "--file",
        dest="files",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="an input file shipped with the task (read-only at /ptm/input/); repeatable",
    )
    new.add_argument("--timeout", type=int, metavar="SECONDS", help="wall-clock limit")
    new.add_argument("--command", metavar="CMD", help="command to run instead of the image's")
    new.add_argument("--memory", metavar="SIZE", help="memory request, e.g. 512m")
    new.add_argument("--cpus", type=float, metavar="N", help="CPU request, e.g. 1.5")
    new.add_argument("--deliver-sftp", metavar="TARGET", help="send output to this SFTP target")
    new.add_argument("--description", metavar="TEXT", help="one line on what the task does")
    new.add_argument(
        "--encrypt",
        action="store_true",
        help="sites encrypt the log and outputs to your signing key (encrypt: true)",
    )
    _registry_option(new)
    new.set_defaults(handler=run_new)


def _register_submit(actions: argparse._SubParsersAction[Any]) -> None:
    submit = actions.add_parser(
        "submit",
        help="validate, commit (signed) and push a task",
        description="Validate tasks/ID/, commit only that folder, signed with your SSH "
        "signing key (git's gpg.format=ssh and user.signingkey, or --sign-key), and push it "
        "to the registry's tasks branch. If someone pushed first, ptm rebases and retries.",
    )
    submit.add_argument("task_id", metavar="ID", help="the task folder tasks/ID/ to submit")
    submit.add_argument("--sign-key", type=Path, metavar="KEY", help="SSH private key to sign with")
    submit.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="push without a signature even though registry.yaml says its sites require one",
    )
    submit.add_argument("--remote", default="origin", help="git remote of the registry")
    submit.add_argument("--json", action="store_true", help="print the result as JSON")
    _registry_option(submit)
    submit.set_defaults(handler=run_submit)


def run_new(args: argparse.Namespace) -> int:
    root = find_registry_root(args.registry)
    draft = TaskDraft(
        task_id=args.task_id,
        image=args.image,
        sites=tuple(args.sites),
        command=tuple(shlex.split(args.command)) if args.command else None,
        config=load_config_file(args.config) if args.config else None,
        timeout=args.timeout,
        memory=args.memory,
        cpus=args.cpus,
        deliver_sftp=args.deliver_sftp,
        encrypt=args.encrypt,
        description=args.description,
        files=tuple(args.files),
    )
    task_dir = write_task(root, draft)
    shown = task_dir.relative_to(root)
    say(f"Wrote {shown}/task.yaml. Check it, then: ptm task submit {args.task_id}")
    return 0


def run_submit(args: argparse.Namespace) -> int:
    root = find_registry_root(args.registry)
    check_task(root, args.task_id)  # a broken task says so before a missing key does
    if not args.allow_unsigned:
        refuse_unsigned(root, args.task_id, sign_key=args.sign_key)
    submitted = submit_task(
        root,
        args.task_id,
        branch=tasks_branch(root),
        sign_key=args.sign_key,
        remote=args.remote,
        on_retry=lambda attempt, why: warn(f"push attempt {attempt}: {why}"),
    )
    if args.json:
        print_json(submitted.__dict__)
        return 0
    if not submitted.signed:
        warn(
            "the commit is not signed: sites that require signed tasks will reject it. Set "
            "git's gpg.format=ssh and user.signingkey, or pass --sign-key KEY."
        )
    signed = "signed" if submitted.signed else "unsigned"
    say(
        f"Submitted task {submitted.task_id} ({signed} commit {submitted.commit[:12]}) "
        f"to branch {submitted.branch}."
    )
    return 0
