"""Start-up time of the quick commands, and which heavy libraries each one imports.

    python bench/startup.py            # 5 runs per command (about 10 s)
    python bench/startup.py --runs 20

Wall time is the median of ``--runs`` fresh interpreters (``python -m ptm ...``); the import
figure is ``python -X importtime``'s cumulative time of ``ptm.main`` plus the chosen command's
module. Heavy libraries: GitPython, docker, paramiko, watchdog, pyrage.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("git", "docker", "paramiko", "watchdog", "pyrage")
COMMANDS = (
    ("--version",),
    ("--help",),
    ("validate", "REGISTRY"),  # a registry made by 'ptm registry init' in a temporary folder
    ("agent", "--help"),
)


def wall_seconds(args: tuple[str, ...], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "ptm", *args], cwd=REPO, capture_output=True, check=True
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def import_profile(args: tuple[str, ...]) -> tuple[float, list[str]]:
    """(milliseconds importing ptm's modules, heavy top-level libraries imported)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ptm", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    total_us, heavy = 0, set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if name.split(".")[0] in HEAVY:
            heavy.add(name.split(".")[0])
        if name == "ptm.main" or name.startswith("ptm.commands."):
            total_us += int(cumulative)
    return total_us / 1000, sorted(heavy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    print(f"{'command':32} {'wall ms':>8} {'import ms':>10}  heavy libraries imported")
    with tempfile.TemporaryDirectory(prefix="ptm-bench-") as scratch:
        registry = str(Path(scratch) / "registry")
        subprocess.run(
            [sys.executable, "-m", "ptm", "registry", "init", registry],
            capture_output=True,
            check=True,
        )
        for args in COMMANDS:
            measure(tuple(registry if a == "REGISTRY" else a for a in args), runs)


def measure(args: tuple[str, ...], runs: int) -> None:
    imports, heavy = import_profile(args)
    wall = wall_seconds(args, runs) * 1000
    command = "ptm " + " ".join("REGISTRY" if "ptm-bench-" in a else a for a in args)
    print(f"{command:32} {wall:8.0f} {imports:10.0f}  {', '.join(heavy) or '-'}")


if __name__ == "__main__":
    main()
