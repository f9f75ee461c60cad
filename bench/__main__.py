"""Every figure the throughput and pickup work is judged by, in one run, each against its floor.

    python -m bench [--quick]

Runs, one after the other, each in a process of its own (their own output is shown as it
comes): the forty-task throughput case (``bench/throughput.py``, 3 rounds; 1 with ``--quick``),
200 queued tasks (``--tasks 200``, one round; skipped with ``--quick``), remote pickup and idle
CPU against a real sshd and the local watch mode (``python -m bench.remote_pickup``), and peak
memory on a registry holding a 300 MiB blob (``python -m bench.memory``). Then the lines that
carry a goal, together. Exits 1 when a bench failed (a task started twice, a timeout). Run from
the repository's root; needs what each bench needs (a Docker engine, the test image, sshd).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

GOAL_MARKERS = ("goal", "once:", "ptm:", "floor:", "local watch:")


def benches(quick: bool) -> list[tuple[str, list[str]]]:
    python = sys.executable
    throughput = [python, "bench/throughput.py"]
    runs = [("throughput, 40 tasks", [*throughput, "--rounds", "1" if quick else "3"])]
    if not quick:
        runs.append(("throughput, 200 tasks", [*throughput, "--tasks", "200", "--rounds", "1"]))
    runs += [
        ("remote pickup and idle", [python, "-m", "bench.remote_pickup"]),
        ("memory", [python, "-m", "bench.memory"]),
    ]
    return runs


def run(title: str, command: list[str]) -> tuple[int, list[str]]:
    """Run one bench, its output shown and kept; (exit status, its lines)."""
    print(f"\n==> {title}: {' '.join(command[1:])}", flush=True)
    began = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
    print(f"    ({time.monotonic() - began:.0f} s)", flush=True)
    return proc.returncode, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, no 200-task case")
    args = parser.parse_args()
    summary: list[str] = []
    failed = []
    for title, command in benches(args.quick):
        status, lines = run(title, command)
        summary += [f"{title}:"] + [f"  {line}" for line in lines if _carries_goal(line)]
        if status != 0:
            failed.append(title)
    print("\n==> the figures against their goals")
    print("\n".join(summary))
    if failed:
        print(f"failed: {', '.join(failed)}")
        raise SystemExit(1)


def _carries_goal(line: str) -> bool:
    return any(marker in line for marker in GOAL_MARKERS)


if __name__ == "__main__":
    main()
