"""How fast is ``ptm status`` on a big federation? Run: ``python bench/status_bench.py``.

Builds a bare registry with 1,000 tasks and 50 sites' ``results/<site>`` branches (one
``git fast-import`` stream; about 45,000 status files plus logs and outputs), clones it, then
times ``ptm status`` (the table), ``ptm status --json`` and ``ptm status TASK`` as a researcher
would run them (a new ``python -m ptm`` process each time), and counts the git processes each
one starts (``GIT_TRACE``).

Options: ``--tasks N``, ``--sites N``, ``--keep DIR`` (build there and keep it), ``--runs N``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ptm.registry import init_registry
from ptm.schema import dump_yaml

COMMIT = "3f2c" * 10
IMAGE_ID = "sha256:" + "ab" * 32
WHEN = 1_795_000_000  # committer time of every generated commit
STATES = (  # (state, weight, reason)
    ("completed", 85, None),
    (
        "rejected",
        5,
        "image bench/stats:1 is not allowed at this site: it matches none of the patterns in "
        "policy.allowed_images ('consortium/.*:.*', 'registry.example.org/approved/.*')",
    ),
    ("failed", 4, "the container exited with code 3"),
    ("running", 3, None),
    ("cancelled", 3, "cancelled by the researcher before it ran"),
)


def status_template(state: str, reason: str | None) -> str:
    """An agent-shaped status.yaml with TASK-ID and SITE-NAME to fill in (dump_yaml is slow)."""
    final = state != "running"
    document = {
        "ptm": 1,
        "task": "TASK-ID",
        "site": "SITE-NAME",
        "state": state,
        "reason": reason,
        "task_commit": COMMIT,
        "submitted_by": "alice@uni.example",
        "image": "bench/stats:1",
        "image_id": IMAGE_ID if state in ("completed", "failed", "running") else None,
        "image_digest": None,
        "exit_code": {"completed": 0, "failed": 3}.get(state),
        "received_at": "2026-11-29T10:00:00Z",
        "started_at": "2026-11-29T10:00:01Z" if state != "rejected" else None,
        "finished_at": "2026-11-29T10:00:09Z" if final else None,
        "outputs": [{"path": "output/summary.csv", "bytes": 22, "sha256": "0" * 64}]
        if state == "completed"
        else [],
        "agent": "ptm 0.1.0",
    }
    return dump_yaml(document)


def task_yaml(task_id: str, sites: list[str]) -> str:
    return dump_yaml(
        {
            "ptm": 1,
            "image": "bench/stats:1",
            "sites": sites,
            "config": {"column": "age"},
            "timeout": 600,
            "description": f"benchmark task {task_id}",
        }
    )


def _data(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return b"data %d\n" % len(raw) + raw + b"\n"


def _commit_header(ref: str, message: str) -> bytes:
    return f"commit {ref}\ncommitter Bench <bench@example.org> {WHEN} +0000\n".encode() + _data(
        message
    )


def _inline(path: str, content: str | bytes) -> bytes:
    return f"M 100644 inline {path}\n".encode() + _data(content)


def plan_tasks(tasks: int, sites: list[str], rng: random.Random) -> dict[str, list[str]]:
    """task id → its sites: four in five go to every site, the rest name ten sites."""
    plan = {}
    for n in range(1, tasks + 1):
        plan[f"task-{n:04d}"] = ["*"] if rng.random() < 0.8 else sorted(rng.sample(sites, 10))
    return plan


def fast_import_stream(plan: dict[str, list[str]], sites: list[str], seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    yield _commit_header("refs/heads/main", f"{len(plan)} benchmark tasks")
    yield b"from refs/heads/main^0\n"
    for task_id, task_sites in plan.items():
        yield _inline(f"tasks/{task_id}/task.yaml", task_yaml(task_id, task_sites))
    templates = [(state, status_template(state, reason)) for state, _, reason in STATES]
    weights = [weight for _, weight, _ in STATES]
    for site in sites:
        yield _commit_header(f"refs/heads/results/{site}", f"results of {site}")
        for task_id, task_sites in plan.items():
            if task_sites != ["*"] and (site not in task_sites or site == task_sites[0]):
                continue  # the first named site never reports: 'waiting'
            state, template = rng.choices(templates, weights)[0]
            folder = f"results/{task_id}/{site}"
            text = template.replace("TASK-ID", task_id).replace("SITE-NAME", site)
            yield _inline(f"{folder}/status.yaml", text)
            if state != "rejected":
                yield _inline(f"{folder}/log.txt", f"{task_id} at {site}: done\n")
            if state == "completed":
                yield _inline(
                    f"{folder}/output/summary.csv", f"site,mean\n{site},{rng.randint(20, 90)}\n"
                )


def build(root: Path, tasks: int, sites_count: int, seed: int = 1) -> tuple[Path, Path, int]:
    """(bare registry, clone, number of status files)."""
    bare, clone = root / "registry.git", root / "clone"
    init_registry(bare, bare=True)
    sites = [f"site-{n:02d}" for n in range(1, sites_count + 1)]
    plan = plan_tasks(tasks, sites, random.Random(seed))
    process = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=bare, stdin=subprocess.PIPE)
    assert process.stdin is not None
    for chunk in fast_import_stream(plan, sites, seed):
        process.stdin.write(chunk)
    process.stdin.close()
    if process.wait() != 0:
        raise SystemExit("git fast-import failed")
    subprocess.run(["git", "clone", "--quiet", str(bare), str(clone)], check=True)
    return bare, clone, count_status_files(bare)


def _git_out(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def count_status_files(bare: Path) -> int:
    refs = _git_out(bare, "for-each-ref", "--format=%(refname)", "refs/heads/results/").split()
    listings = (
        _git_out(bare, "ls-tree", "-r", "--name-only", ref, "--", "results/") for ref in refs
    )
    return sum(listing.count("/status.yaml") for listing in listings)


def time_command(
    args: list[str], runs: int, trace: Path, *, forget: Path | None = None
) -> tuple[list[float], int, int]:
    """(seconds of each run, lines printed, git processes started in the last run).

    ``forget`` is deleted before each run (the overview's memo: a first run reads every file).
    """
    times, lines = [], 0
    env = {**os.environ}
    for run in range(runs):
        if forget is not None:
            forget.unlink(missing_ok=True)
        if run == runs - 1:
            trace.unlink(missing_ok=True)
            env["GIT_TRACE"] = str(trace)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "ptm", *args], capture_output=True, text=True, env=env
        )
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"ptm {' '.join(args)} failed:\n{done.stderr}")
        lines = len(done.stdout.splitlines())
    processes = sum("trace: built-in: git" in line for line in trace.read_text().splitlines())
    return times, lines, processes


def python_startup(runs: int) -> float:
    """Seconds for ``python -m ptm --version``: the floor under every command."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ptm", "--version"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build in this new folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ptm-bench-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        _, clone, statuses = build(root, args.tasks, args.sites)
        print(
            f"built a registry with {args.tasks} tasks, {args.sites} results branches and "
            f"{statuses} status files in {time.perf_counter() - started:.1f}s"
        )
        trace = root / "git-trace.txt"
        memo = clone / ".git" / "ptm-overview-memo.json"
        where = ["--registry", str(clone)]
        cases: list[tuple[str, list[str], Path | None]] = [
            ("status, first run (no memo)", ["status", *where], memo),
            ("status", ["status", *where], None),
            ("status --no-fetch", ["status", "--no-fetch", *where], None),
            ("status --json", ["status", "--json", *where], None),
            ("status task-0500", ["status", "task-0500", *where], None),
            ("status task-0500 --json", ["status", "task-0500", "--json", *where], None),
        ]
        print(f"python -m ptm --version: {python_startup(args.runs):.2f}s (interpreter, imports)")
        print(f"\n{'ptm …':<30}{'best':>8}{'median':>8}{'lines':>8}{'git procs':>11}")
        for label, command, forget in cases:
            times, lines, processes = time_command(command, args.runs, trace, forget=forget)
            best, median = min(times), statistics.median(times)
            print(f"{label:<30}{best:>7.2f}s{median:>7.2f}s{lines:>8}{processes:>11}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
