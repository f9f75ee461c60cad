"""Where a site's results live: its branch ``results/<site>`` holds, for each task it acted on,
``results/<task>/<site>/`` with ``status.yaml``, ``log.txt`` and ``output/…`` (or, sealed,
``result.age``). The agent writes this layout (ptm.ledger); status, results, audit and the API
read it."""

from __future__ import annotations

from pathlib import Path

RESULTS_DIR = "results"
STATUS_FILE = "status.yaml"
LOG_FILE = "log.txt"
OUTPUT_DIR = "output"
SEALED_FILE = "result.age"  # log and outputs, encrypted (ptm.sealed)


def results_branch(site: str) -> str:
    return f"results/{site}"


def result_path(task_id: str, site: str) -> str:
    return f"{RESULTS_DIR}/{task_id}/{site}"


def own_files(folder: Path) -> list[tuple[str, Path]]:
    """Regular files below a folder this agent made itself (collected outputs), sorted, each
    with its path relative to ``folder``."""
    return [
        (path.relative_to(folder).as_posix(), path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    ]
