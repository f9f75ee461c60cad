"""ptm validate [PATH ...] [--staged]"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ptm.console import print_json, say
from ptm.errors import Problem, PtmError
from ptm.registry import REGISTRY_FILE, TASKS_DIR
from ptm.registry_sites import SITES_DIR, load_sites, registry_site_problems, task_site_problems
from ptm.task import TASK_FILE
from ptm.validation import problems_in_registry, problems_in_task_dir


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "validate",
        help="check a registry tree or one task folder (for registry CI)",
        description="Check every document of a registry tree (registry.yaml, sites/*.yaml, "
        "each tasks/<id>/, and that tasks name only sites listed in sites/) or of one task "
        "folder against ptm's schemas and layout rules. Prints every problem, one per line: "
        "file, field, message and rule. Exit 0 when clean, 1 otherwise.",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="a registry folder, a task folder or a file in one (default: the current folder); "
        "with --staged, files of the registry as pre-commit passes them",
    )
    parser.add_argument(
        "--staged",
        action="store_true",
        help="check what is staged for the next commit (git's index) instead of the working "
        "tree, so untracked drafts do not count; for pre-commit hooks",
    )
    parser.add_argument("--json", action="store_true", help="print problems as JSON")
    parser.set_defaults(handler=run)


@dataclass(frozen=True)
class Checked:
    path: str
    kind: str
    problems: tuple[Problem, ...]


def run(args: argparse.Namespace) -> int:
    paths: list[Path] = args.paths
    if args.staged:
        with staged_tree(Path.cwd()) as (root, prefix):
            checked = check_staged(root, [prefix / p for p in paths])
    else:
        checked = [check_path(path) for path in paths or [Path.cwd()]]
    problems = [p for c in checked for p in c.problems]
    if args.json:
        documents = [
            {"path": c.path, "kind": c.kind, "problems": [p.__dict__ for p in c.problems]}
            for c in checked
        ]
        print_json(documents[0] if len(documents) == 1 else documents)
    else:
        for problem in problems:
            say(str(problem))
        say(_summary(checked, problems))
    return 1 if problems else 0


def _summary(checked: Sequence[Checked], problems: Sequence[Problem]) -> str:
    if problems:
        return f"{len(problems)} problem(s)."
    if len(checked) == 1:
        return f"{checked[0].path}: {checked[0].kind} is valid."
    return f"{len(checked)} checked ({', '.join(c.path for c in checked)}): all valid."


def check_path(path: Path) -> Checked:
    if (path / REGISTRY_FILE).is_file():
        return Checked(str(path), "registry", tuple(registry_problems(path)))
    task_dir = _task_dir_of(path)
    if task_dir is None:
        raise PtmError(
            f"{path}: neither a registry (no {REGISTRY_FILE}) nor a task folder (no {TASK_FILE})"
        )
    shown = str(task_dir) if task_dir != path else str(path)
    return Checked(shown, "task", tuple(task_problems(task_dir, source=shown)))


def _task_dir_of(path: Path) -> Path | None:
    for folder in (path, *path.parents[:2]):
        if (folder / TASK_FILE).exists() or (folder / TASK_FILE).is_symlink():
            return folder
        if folder.parent.name == TASKS_DIR and folder.is_dir():
            return folder
    return None


def registry_problems(root: Path) -> list[Problem]:
    return problems_in_registry(root) + registry_site_problems(root)


def task_problems(task_dir: Path, *, source: str) -> list[Problem]:
    problems = problems_in_task_dir(task_dir, source=source)
    root = task_dir.absolute().parent.parent
    if task_dir.absolute().parent.name == TASKS_DIR and (root / REGISTRY_FILE).is_file():
        problems += task_site_problems(task_dir, load_sites(root).names)
    return problems


def check_staged(root: Path, files: Sequence[PurePosixPath]) -> list[Checked]:
    """Check the staged tree: the tasks the files belong to, or all of it for registry files."""
    task_ids = sorted({f.parts[1] for f in files if len(f.parts) > 2 and f.parts[0] == TASKS_DIR})
    whole = not files or any(f.parts[:1] in {(REGISTRY_FILE,), (SITES_DIR,)} for f in files)
    if whole or not (root / REGISTRY_FILE).is_file():
        return [Checked("(staged)", "registry", tuple(registry_problems(root)))]
    checked = []
    for task_id in task_ids:
        task_dir = root / TASKS_DIR / task_id
        if task_dir.is_dir():  # a task whose files are all being removed is not checked
            source = f"{TASKS_DIR}/{task_id}"
            checked.append(Checked(source, "task", tuple(task_problems(task_dir, source=source))))
    return checked or [Checked("(staged)", "registry", ())]


@contextmanager
def staged_tree(start: Path) -> Iterator[tuple[Path, PurePosixPath]]:
    """git's index written out into a temporary folder: (that folder, ``start``'s prefix)."""
    # Imported here: only --staged runs git, and plain 'ptm validate' stays quick to start.
    from ptm.gitrepo import GitRepo

    repo = GitRepo(start)
    prefix = PurePosixPath(repo.run("rev-parse", "--show-prefix").strip() or ".")
    with tempfile.TemporaryDirectory(prefix="ptm-staged-") as tmp:
        tree = Path(tmp) / "tree"
        repo.run("checkout-index", "--all", f"--prefix={tree}/")
        tree.mkdir(exist_ok=True)
        yield tree, prefix
