"""ptm registry init PATH [--bare] | ptm registry signers"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ptm.console import say, warn
from ptm.errors import InvalidDocument, PtmError
from ptm.registry import DEFAULT_BRANCH, DISTRIBUTION, find_registry_root, init_registry


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("registry", help="create a task registry, list its sites' keys")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _register_init(actions)
    _register_signers(actions)


def _register_init(actions: argparse._SubParsersAction[Any]) -> None:
    init = actions.add_parser(
        "init",
        help="make a new registry from ptm's template",
        description="Create a registry (a git repository with registry.yaml, a README for its "
        "users, sites/, an example task, CI that runs 'ptm validate' and a pre-commit hook) at "
        "PATH. registry.yaml, both CI files and the README name the tasks branch.",
    )
    init.add_argument("path", type=Path, metavar="PATH", help="a new or empty folder")
    init.add_argument(
        "--bare",
        action="store_true",
        help="make a bare repository to serve as the shared remote (clone it to work in it)",
    )
    init.add_argument(
        "--branch",
        default=DEFAULT_BRANCH,
        metavar="NAME",
        help="the tasks branch (default: main)",
    )
    init.add_argument(
        "--sign-key",
        type=Path,
        metavar="KEY",
        help="SSH private key to sign the first commit with (default: git's own signing config)",
    )
    init.add_argument(
        "--ptm-requirement",
        metavar="REQ",
        help=f"what the registry's CI installs to run 'ptm validate' (default: {DISTRIBUTION} "
        "pinned to this version; or a git URL with a tag you control, "
        "git+https://host/ptm.git@vX.Y.Z)",
    )
    init.set_defaults(handler=run_init)


def _register_signers(actions: argparse._SubParsersAction[Any]) -> None:
    signers = actions.add_parser(
        "signers",
        help="print the sites' result-signing keys in git's allowed-signers format",
        description="Print one allowed-signers line per site listed in sites/*.yaml that "
        "gives a public_key. Append the researchers' keys to get the file 'ptm audit "
        "--allowed-signers' and 'git log --show-signature' need.",
    )
    signers.add_argument(
        "--registry",
        type=Path,
        default=Path.cwd(),
        metavar="DIR",
        help="a clone of the registry (default: the current folder or one above it)",
    )
    signers.set_defaults(handler=run_signers)


def run_init(args: argparse.Namespace) -> int:
    path: Path = args.path
    created = init_registry(
        path,
        bare=args.bare,
        branch=args.branch,
        sign_key=args.sign_key,
        ptm_requirement=args.ptm_requirement,
    )
    kind = "bare registry" if args.bare else "registry"
    signed = "signed" if created.signed else "unsigned"
    say(f"Created {kind} at {path} (tasks branch '{created.branch}', {signed} first commit).")
    if not created.signed:
        warn(
            "the first commit (registry.yaml, sites/, the CI files) is not signed: "
            "'git log --show-signature' shows 'No signature' for it, so an auditor cannot tell "
            "who set the registry up ('ptm audit' checks the tasks and results that follow, "
            "not this commit). To sign it, pass --sign-key KEY or set git's gpg.format=ssh and "
            "user.signingkey, and init again."
        )
    if args.bare:
        say(f"Next: git clone {path.resolve()} my-registry && cd my-registry && ptm task new …")
    return 0


def run_signers(args: argparse.Namespace) -> int:
    # Imported here: only this action reads sites/.
    from ptm.registry_sites import load_sites

    root = find_registry_root(args.registry)
    sites = load_sites(root)
    if sites.problems:
        raise InvalidDocument(list(sites.problems))
    lines = [line for entry in sites.entries if (line := entry.allowed_signers_line())]
    if not lines:
        raise PtmError(f"{root}/sites: no site lists a public_key")
    for line in lines:
        say(line)
    return 0
