"""ptm registry init PATH [--bare]"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ptm.console import say
from ptm.registry import DEFAULT_BRANCH, init_registry


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("registry", help="create a task registry")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init",
        help="make a new registry from ptm's template",
        description="Create a registry (a git repository with registry.yaml, a README for its "
        "users, tasks/ with an example, CI that runs 'ptm validate') at PATH.",
    )
    init.add_argument("path", type=Path, metavar="PATH", help="a new or empty folder")
    init.add_argument(
        "--bare",
        action="store_true",
        help="make a bare repository to serve as the shared remote (clone it to work in it)",
    )
    init.add_argument("--branch", default=DEFAULT_BRANCH, help="the tasks branch (default: main)")
    init.add_argument(
        "--sign-key",
        type=Path,
        metavar="KEY",
        help="SSH private key to sign the first commit with (default: git's own signing config)",
    )
    init.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    path: Path = args.path
    init_registry(path, bare=args.bare, branch=args.branch, sign_key=args.sign_key)
    kind = "bare registry" if args.bare else "registry"
    say(f"Created {kind} at {path} (tasks branch '{args.branch}').")
    if args.bare:
        say(f"Next: git clone {path.resolve()} my-registry && cd my-registry && ptm task new …")
    return 0
