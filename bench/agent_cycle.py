"""How an agent cycle's cost grows with the registry: idle cycles, and cycles with one new task,
on registries holding 100 and 10,000 tasks. A cycle should cost the same on both.

    python bench/agent_cycle.py [--sizes 100 10000] [--idle 30] [--new 8] [--run]

Without --run the new task names an image the site does not allow, so the cycle measures the
git side only (fetch, diff, judge, commit and push of a `rejected` status). With --run the task
runs in a container (needs a Docker engine and the image ptm-test/busybox:latest).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from ptm.agent import Agent
from ptm.registry import init_registry
from ptm.runtimes.docker import DockerRuntime
from ptm.siteconfig import load_site_config

SITE = "bench-site"
TASK_TEXT = "ptm: 1\nimage: ptm-test/busybox:latest\nsites: [another-site]\n"


def build_registry(folder: Path, tasks: int) -> Path:
    """A bare registry whose tasks branch holds ``tasks`` tasks for another site (fast-import)."""
    registry = folder / "registry.git"
    init_registry(registry, bare=True)
    blob = TASK_TEXT.encode()
    lines = [b"blob", b"mark :1", b"data %d" % len(blob), blob]
    lines += [
        b"commit refs/heads/main",
        b"committer Bench <bench@example.org> 1764400000 +0000",
        b"data 17",
        b"10k tasks at once",
        b"from refs/heads/main^0",
    ]
    lines += [b"M 100644 :1 tasks/t%05d/task.yaml" % i for i in range(tasks)]
    stream = b"\n".join(lines) + b"\n"
    subprocess.run(["git", "fast-import", "--quiet"], cwd=registry, input=stream, check=True)
    return registry


def site_config(folder: Path, registry: Path) -> Path:
    document = {
        "ptm": 1,
        "site": SITE,
        "registry": {"url": str(registry)},
        "workdir": str(folder / "work"),
        "policy": {"allowed_images": ["ptm-test/.*:.*"], "require_signed_tasks": False},
        "runtime": {"pull": "never"},
    }
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


class Researcher:
    def __init__(self, registry: Path, folder: Path) -> None:
        self.work = folder / "researcher"
        subprocess.run(["git", "clone", "-q", str(registry), str(self.work)], check=True)
        self.count = 0

    def push_task(self, *, allowed: bool) -> None:
        self.count += 1
        image = "ptm-test/busybox:latest" if allowed else "not-allowed/x:1"
        task = self.work / "tasks" / f"new-{self.count}"
        task.mkdir(parents=True)
        (task / "task.yaml").write_text(
            f"ptm: 1\nimage: {image}\nsites: [{SITE}]\ncommand: ['true']\n"
        )
        for args in (["add", "tasks"], ["commit", "-q", "-m", "new"], ["push", "-q"]):
            subprocess.run(["git", *args], cwd=self.work, check=True)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(tasks: int, *, idle_cycles: int, new_cycles: int, run: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ptm-bench-") as tmp:
        folder = Path(tmp)
        registry = build_registry(folder, tasks)
        agent = Agent(load_site_config(site_config(folder, registry)), DockerRuntime(None))
        first = timed(lambda: (agent.start(), agent.once()))
        idle = [timed(agent.cycle) for _ in range(idle_cycles)]
        researcher = Researcher(registry, folder)
        new = []
        for _ in range(new_cycles):
            researcher.push_task(allowed=run)
            new.append(timed(agent.once))
        return {
            "first_sync_s": first,
            "idle_ms": statistics.median(idle) * 1000,
            "new_task_ms": statistics.median(new) * 1000,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--idle", type=int, default=30, help="idle cycles to time")
    parser.add_argument("--new", type=int, default=8, help="cycles with one new task to time")
    parser.add_argument("--run", action="store_true", help="run the new tasks in containers")
    args = parser.parse_args()
    results = {
        n: measure(n, idle_cycles=args.idle, new_cycles=args.new, run=args.run) for n in args.sizes
    }
    print(f"{'tasks':>8} {'first sync s':>13} {'idle cycle ms':>14} {'new-task cycle ms':>18}")
    for n, r in results.items():
        print(f"{n:>8} {r['first_sync_s']:>13.2f} {r['idle_ms']:>14.1f} {r['new_task_ms']:>18.1f}")
    small, large = results[min(results)], results[max(results)]
    idle_ratio = large["idle_ms"] / small["idle_ms"]
    new_ratio = large["new_task_ms"] / small["new_task_ms"]
    print(
        f"ratio {max(results)}/{min(results)} tasks: idle {idle_ratio:.2f}x, new task "
        f"{new_ratio:.2f}x (1.0x means the cost does not grow with the registry)"
    )


if __name__ == "__main__":
    main()
