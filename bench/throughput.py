"""Task throughput against the engine's floor: many trivial tasks, two at a time.

    python bench/throughput.py [--tasks 40] [--parallel 2] [--rounds 3] [--profile out.prof]

Pushes ``--tasks`` trivial tasks (``true`` in ptm-test/busybox:latest) for one site in one
commit to a bare local registry, with a real ``ptm agent run`` (watch mode, ``max_parallel`` =
``--parallel``), and takes the time from the push to the last result on the results branch.
The floor: the same number of containers, with the sandbox's options, started with bare
``docker run`` ``--parallel`` at a time, right before or after (in turns), in each of
``--rounds`` rounds; the median round's figures are shown (these machines are noisy). Then it
counts, from the results branch's history, how often each task was started (``running``
recorded): each exactly once, in every round.
``--profile`` runs the agent under cProfile and writes its stats there. Needs a Docker engine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import docker
from idle_and_pickup import IMAGE, SITE, cpu_seconds, sandbox_options, site_config, wait_until

from ptm.registry import init_registry
from ptm.workdir import WorkDir

FINAL = ("completed", "failed", "crashed", "rejected", "timed_out", "cancelled", "denied")


def push_tasks(work: Path, count: int) -> float:
    """Commit ``count`` tasks in one commit, push; return when the push began."""
    for n in range(count):
        task = work / "tasks" / f"t-{n:04d}"
        task.mkdir(parents=True)
        (task / "task.yaml").write_text(
            f"ptm: 1\nimage: {IMAGE}\nsites: [{SITE}]\ncommand: ['true']\n"
        )
    subprocess.run(["git", "add", "tasks"], cwd=work, check=True)
    subprocess.run(["git", "commit", "-q", "-m", f"{count} tasks"], cwd=work, check=True)
    began = time.time()
    subprocess.run(["git", "push", "-q"], cwd=work, check=True)
    return began


class Finished:
    """How many tasks have a final status on the registry's results branch, counted with git
    only when the branch's ref file changed: asking git every 50 ms would take CPU from the
    agent being measured (the floor has nothing of the kind beside it)."""

    def __init__(self, registry: Path) -> None:
        self.registry = registry
        self.ref_file = registry / "refs" / "heads" / "results" / SITE
        self.seen: bytes | None = None
        self.count = 0

    def __call__(self) -> int:
        try:
            tip = self.ref_file.read_bytes()
        except FileNotFoundError:
            return 0
        if tip != self.seen:
            self.seen, self.count = tip, finished(self.registry)
        return self.count


def finished(registry: Path) -> int:
    """How many tasks have a final status on the registry's results branch."""
    ref = f"refs/heads/results/{SITE}"
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", ref, "--", "results/"],
        cwd=registry,
        capture_output=True,
        text=True,
    )
    paths = [p for p in listing.stdout.splitlines() if p.endswith("/status.yaml")]
    if not paths:
        return 0
    batch = "".join(f"{ref}:{p}\n" for p in paths)
    shown = subprocess.run(
        ["git", "cat-file", "--batch"], cwd=registry, input=batch, capture_output=True, text=True
    )
    return sum(
        1
        for line in shown.stdout.splitlines()
        if line.split(": ")[-1] in FINAL and line.startswith("state: ")
    )


def starts_per_task(registry: Path) -> Counter[str]:
    """Task id -> how many ``running`` records the results branch's history holds."""
    log = subprocess.run(
        ["git", "log", "--format=%B%x00", f"refs/heads/results/{SITE}"],
        cwd=registry,
        capture_output=True,
        text=True,
        check=True,
    )
    counts: Counter[str] = Counter()
    for message in log.stdout.split("\0"):
        lines = dict(
            line.split(": ", 1) for line in message.strip().splitlines()[1:] if ": " in line
        )
        if lines.get("State") == "running":
            counts[lines["Task"]] += 1
    return counts


ENGINE_COMMANDS = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2")


def engine_cpu_seconds() -> float:
    """CPU the engine's processes have used so far (the containers' own, waited for by their
    shims, included)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() in ENGINE_COMMANDS:
                total += cpu_seconds(int(proc.name))
        except (OSError, ValueError):
            continue
    return total


def run_agent(
    folder: Path, count: int, parallel: int, profile: str | None
) -> tuple[float, Path, float, float]:
    """(seconds from the push to the last result, the registry, CPU seconds of the agent with
    its git processes, of the engine) for ``count`` tasks."""
    registry = folder / "registry.git"
    init_registry(registry, bare=True)
    subprocess.run(["git", "config", "receive.autogc", "false"], cwd=registry, check=True)
    work = folder / "researcher"
    subprocess.run(["git", "clone", "-q", str(registry), str(work)], check=True)
    config = site_config(folder, registry, 30)
    text = config.read_text() + f"limits:\n  max_parallel: {parallel}\n"
    config.write_text(text)
    command = [sys.executable, "-m", "ptm", "agent", "run", "--config", str(config)]
    if profile:
        command[1:3] = ["-m", "cProfile", "-o", profile, "-m", "ptm"]
    with open(folder / "agent.log", "wb") as log:
        agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        workdir = WorkDir(folder / "work")
        wait_until(lambda: workdir.load_state().processed, 60, "the agent's first cycle")
        agent_before, engine_before = cpu_seconds(agent.pid), engine_cpu_seconds()
        began = push_tasks(work, count)
        done = Finished(registry)
        wait_until(lambda: done() >= count, 30 + count, "every result")
        took = time.time() - began
        agent_cpu = cpu_seconds(agent.pid) - agent_before
        engine_cpu = engine_cpu_seconds() - engine_before
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    return took, registry, agent_cpu, engine_cpu


def bare_engine(folder: Path, count: int, parallel: int) -> tuple[float, float]:
    """``count`` sandboxed ``docker run --rm`` of the same image, ``parallel`` at a time:
    (seconds, CPU seconds of the engine)."""
    options = sandbox_options(folder)
    pending = list(range(count))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                pending.pop()
            command = ["docker", "run", "--rm", *options, IMAGE, "true"]
            subprocess.run(command, check=True, capture_output=True)

    began, engine_before = time.time(), engine_cpu_seconds()
    threads = [threading.Thread(target=worker) for _ in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.time() - began, engine_cpu_seconds() - engine_before


@dataclass(frozen=True)
class Round:
    ptm: float
    floor: float
    agent_cpu: float
    engine_cpu: float
    floor_engine_cpu: float
    starts: Counter[str]

    @property
    def ratio(self) -> float:
        return self.ptm / self.floor


def one_round(folder: Path, tasks: int, parallel: int, profile: str | None, n: int) -> Round:
    """The agent and the floor back to back, in turns first (a noisy machine drifts)."""
    floor_first = n % 2 == 1
    if floor_first:
        floor, floor_engine_cpu = bare_engine(folder, tasks, parallel)
    took, registry, agent_cpu, engine_cpu = run_agent(folder, tasks, parallel, profile)
    starts = starts_per_task(registry)
    if not floor_first:
        floor, floor_engine_cpu = bare_engine(folder, tasks, parallel)
    client = docker.from_env()
    for container in client.containers.list(all=True, filters={"label": f"ptm.site={SITE}"}):
        container.remove(force=True)
    return Round(took, floor, agent_cpu, engine_cpu, floor_engine_cpu, starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40, help="trivial tasks to push at once")
    parser.add_argument("--parallel", type=int, default=2, help="max_parallel and floor width")
    parser.add_argument("--rounds", type=int, default=3, help="agent/floor pairs (median shown)")
    parser.add_argument("--profile", help="run the agent under cProfile, stats to this file")
    args = parser.parse_args()
    rounds = []
    for n in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="ptm-bench-") as tmp:
            done = one_round(Path(tmp), args.tasks, args.parallel, args.profile, n)
        rounds.append(done)
        print(
            f"round {n + 1}: ptm {done.ptm:.2f} s, floor {done.floor:.2f} s, "
            f"ratio {done.ratio:.2f}x",
            flush=True,
        )
    middle = sorted(rounds, key=lambda r: r.ratio)[len(rounds) // 2]
    print(
        f"ptm:    {middle.ptm:.2f} s push -> last of {args.tasks} results on the branch "
        f"(max_parallel {args.parallel}, local registry, watch mode; the median round)"
    )
    print(
        f"floor:  {middle.floor:.2f} s the same containers, bare 'docker run', "
        f"{args.parallel} at a time, in the same round"
    )
    print(f"ratio:  {middle.ratio:.2f}x the floor (goal <= 1.25x)")
    print(
        f"cpu:    the agent and its git processes {middle.agent_cpu:.1f} s "
        f"({middle.agent_cpu / args.tasks * 1000:.0f} ms a task), the engine "
        f"{middle.engine_cpu:.1f} s; the floor's engine {middle.floor_engine_cpu:.1f} s (2 cores)"
    )
    bad = 0
    for n, done in enumerate(rounds):
        twice = sorted(t for t, c in done.starts.items() if c > 1)
        never = args.tasks - len(done.starts)
        bad += len(twice) + never
        print(
            f"once:   round {n + 1}: {len(done.starts) - len(twice)} of {args.tasks} tasks "
            f"started exactly once (started twice: {len(twice)}"
            f"{': ' + ', '.join(twice[:5]) if twice else ''}; never: {never})"
        )
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
