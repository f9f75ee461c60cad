"""ptm validate [PATH]"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ptm.console import print_json, say
from ptm.errors import PtmError
from ptm.registry import REGISTRY_FILE
from ptm.task import TASK_FILE
from ptm.validation import problems_in_registry, problems_in_task_dir


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "validate",
        help="check a registry tree or one task folder (for registry CI)",
        description="Check every document of a registry tree (registry.yaml, each "
        "tasks/<id>/) or of one task folder against ptm's schemas and layout rules. Prints "
        "every problem, one per line: file, field, message and rule. Exit 0 when clean, 1 "
        "otherwise.",
    )
    parser.add_argument("path", nargs="?", type=Path, default=Path.cwd(), metavar="PATH")
    parser.add_argument("--json", action="store_true", help="print problems as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    path: Path = args.path
    if (path / REGISTRY_FILE).is_file():
        problems, what = problems_in_registry(path), "registry"
    elif (path / TASK_FILE).exists() or (path / TASK_FILE).is_symlink():
        problems, what = problems_in_task_dir(path, source=str(path)), "task"
    else:
        raise PtmError(
            f"{path}: neither a registry (no {REGISTRY_FILE}) nor a task folder (no {TASK_FILE})"
        )
    if args.json:
        print_json({"path": str(path), "kind": what, "problems": [p.__dict__ for p in problems]})
    else:
        for problem in problems:
            say(str(problem))
        say(f"{path}: {what} is valid." if not problems else f"{len(problems)} problem(s).")
    return 1 if problems else 0
