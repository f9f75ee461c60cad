"""An idle agent's CPU use and the pickup latency of a pushed task, against their floors.

    python bench/idle_and_pickup.py [--idle 10] [--pickups 3] [--poll 30]

Runs a real ``ptm agent run`` (a subprocess) on a bare local registry (watch mode), lets it idle,
and reads its CPU time, git children included, from /proc. Then pushes a trivial task (``true``
in ptm-test/busybox:latest) a few times and takes the time from the moment the push landed (the
branch's ref written in the registry) to the container's start event from the engine, split
into waking, judging (up to the committed ``accepted``) and starting (from the agent's JSON
log). The floors: a bare ``docker run`` of the same image, from the command to its start event,
and the same with the sandbox's options. Needs a Docker engine and the test image.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import yaml

from ptm.registry import init_registry
from ptm.workdir import WorkDir

SITE = "bench-site"
IMAGE = "ptm-test/busybox:latest"
AGENT_RUN = [sys.executable, "-m", "ptm", "agent", "run"]
FLOOR_KEY = "ptm-bench"


class StartEvents:
    """The engine's container start events, by a label's value: when each container started."""

    def __init__(self, client: docker.DockerClient, label: str) -> None:
        self._label = label
        self._stream = client.events(
            decode=True, filters={"type": "container", "event": "start", "label": label}
        )
        self.started: dict[str, float] = {}
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                attributes = event.get("Actor", {}).get("Attributes", {})
                key = attributes.get(self._label, "")
                with self._changed:
                    self.started[key] = event["timeNano"] / 1e9
                    self._changed.notify_all()
        except Exception:  # the stream is closed at the end
            return

    def wait(self, key: str, timeout: float = 60) -> float:
        with self._changed:
            if not self._changed.wait_for(lambda: key in self.started, timeout=timeout):
                raise SystemExit(f"no container start for {key!r} within {timeout} s")
            return self.started[key]

    def close(self) -> None:
        self._stream.close()


def site_document(registry: dict[str, str], workdir: Path, poll: float) -> dict[str, Any]:
    """The bench site's config: trivial tasks of the test image, unsigned, never pulled."""
    return {
        "ptm": 1,
        "site": SITE,
        "registry": registry,
        "workdir": str(workdir),
        "poll_interval": poll,
        "policy": {"allowed_images": ["ptm-test/.*:.*"], "require_signed_tasks": False},
        "runtime": {"pull": "never"},
    }


def site_config(folder: Path, registry: Path, poll: float) -> Path:
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(site_document({"url": str(registry)}, folder / "work", poll)))
    return path


@contextmanager
def running_agent(
    folder: Path, config: Path, client: docker.DockerClient, *, options: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``ptm agent run`` (its log in ``folder/agent.log``), after its first cycle; it is
    stopped (SIGTERM) and its containers removed at the end."""
    with open(folder / "agent.log", "wb") as log:
        agent = subprocess.Popen(
            [*AGENT_RUN, "--config", str(config), *options], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        workdir = WorkDir(Path(yaml.safe_load(config.read_text())["workdir"]))
        wait_until(lambda: workdir.load_state().processed, 60, "the agent's first cycle")
        yield agent
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        for container in client.containers.list(all=True, filters={"label": f"ptm.site={SITE}"}):
            container.remove(force=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its children it has waited for (each git call)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """cpu_seconds of ``pid`` and of every live process below it (children not yet waited
    for, such as a long-running helper, count too)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            total += cpu_seconds(current)
        todo += parents.get(current, [])
    return total


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def push_task(work: Path, registry: Path, task_id: str) -> float:
    """Commit and push a task for this site; return when the push landed: the time git wrote
    the branch's ref in the registry (the agent may wake before ``git push`` itself returns)."""
    task = work / "tasks" / task_id
    task.mkdir(parents=True)
    (task / "task.yaml").write_text(f"ptm: 1\nimage: {IMAGE}\nsites: [{SITE}]\ncommand: ['true']\n")
    for args in (["add", "tasks"], ["commit", "-q", "-m", task_id], ["push", "-q"]):
        subprocess.run(["git", *args], cwd=work, check=True)
    return (registry / "refs" / "heads" / "main").stat().st_mtime_ns / 1e9


def final_state(registry: Path, task_id: str) -> bool:
    ref = f"results/{SITE}:results/{task_id}/{SITE}/status.yaml"
    done = subprocess.run(["git", "show", ref], cwd=registry, capture_output=True, text=True)
    return done.returncode == 0 and "state: completed" in done.stdout


def sandbox_options(folder: Path) -> list[str]:
    """``docker run`` options like those the agent's sandbox sets (runtimes/docker.py)."""
    (folder / "in").mkdir(exist_ok=True)
    (folder / "out").mkdir(exist_ok=True)
    return [
        *("--network", "none", "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m"),
        *("--cap-drop", "ALL", "--security-opt", "no-new-privileges"),
        *("--memory", "1g", "--memory-swap", "1g", "--cpus", "1", "--pids-limit", "256"),
        *("-v", f"{folder / 'in'}:/ptm/input:ro", "-v", f"{folder / 'out'}:/ptm/output"),
    ]


def floor_pickup(events: StartEvents, key: str, options: list[str]) -> float:
    """From ``docker run`` to the container's start event."""
    began = time.time()
    command = ["docker", "run", "--rm", "--label", f"{FLOOR_KEY}={key}", *options, IMAGE, "true"]
    subprocess.run(command, check=True, capture_output=True)
    return events.wait(key) - began


def measure(folder: Path, args: argparse.Namespace) -> dict[str, float]:
    registry = folder / "registry.git"
    init_registry(registry, bare=True)
    work = folder / "researcher"
    subprocess.run(["git", "clone", "-q", str(registry), str(work)], check=True)
    client = docker.from_env()
    tasks = StartEvents(client, "ptm.task")
    floors = StartEvents(client, FLOOR_KEY)
    config = site_config(folder, registry, args.poll)
    options = ["--log-format", "json", "-v"]
    try:
        with running_agent(folder, config, client, options=options) as agent:
            time.sleep(1)
            cpu_before, wall_before = cpu_seconds(agent.pid), time.monotonic()
            time.sleep(args.idle)
            idle_cpu = (cpu_seconds(agent.pid) - cpu_before) / (time.monotonic() - wall_before)
            pickups, steps = [], []
            for n in range(args.pickups):
                task_id = f"pickup-{n}"
                pushed = push_task(work, registry, task_id)
                started = tasks.wait(task_id)
                pickups.append(started - pushed)
                steps.append((pushed, task_id, started))
                wait_until(lambda t=task_id: final_state(registry, t), 60, f"{task_id}'s result")
        floor = [floor_pickup(floors, f"bare-{n}", []) for n in range(args.pickups)]
        sandbox = sandbox_options(folder)
        sandboxed = [floor_pickup(floors, f"sandbox-{n}", sandbox) for n in range(args.pickups)]
    finally:
        tasks.close()
        floors.close()
    breakdown = pickup_steps(folder / "agent.log", steps)
    return {
        "idle_cpu": idle_cpu,
        "pickup": statistics.median(pickups),
        "floor": statistics.median(floor),
        "sandboxed": statistics.median(sandboxed),
        **{name: statistics.median(values) for name, values in breakdown.items()},
    }


def pickup_steps(log: Path, pickups: list[tuple[float, str, float]]) -> dict[str, list[float]]:
    """From the agent's JSON log: push landed -> the cycle it woke, -> the task accepted
    (committed), -> the container's start."""
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    for record in records:
        record["t"] = datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()
    steps: dict[str, list[float]] = {"wake": [], "decide": [], "start": []}
    for pushed, task_id, started in pickups:
        woke = min(r["t"] for r in records if r.get("decision") == "cycle" and r["t"] >= pushed)
        accepted = next(
            r["t"] for r in records if r.get("task") == task_id and r.get("decision") == "accepted"
        )
        steps["wake"].append(woke - pushed)
        steps["decide"].append(accepted - woke)
        steps["start"].append(started - accepted)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=10, help="seconds of idling to measure")
    parser.add_argument("--pickups", type=int, default=3, help="tasks to push, one at a time")
    parser.add_argument("--poll", type=int, default=30, help="the site's poll_interval")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ptm-bench-") as tmp:
        figures = measure(Path(tmp), args)
    print(
        f"idle agent:  {figures['idle_cpu'] * 100:.2f} % of a core over {args.idle:g} s "
        f"(local registry watched, poll {args.poll:g} s; goal <= 1 %)"
    )
    print(
        f"pickup:      {figures['pickup']:.2f} s push landed -> container start, median of "
        f"{args.pickups} (goal about 0.5 s)"
    )
    print(
        f"  of which:  {figures['wake'] * 1000:.0f} ms to wake, {figures['decide'] * 1000:.0f} ms "
        f"to judge and commit 'accepted', {figures['start'] * 1000:.0f} ms from there to the start"
    )
    print(f"floor:       {figures['floor']:.2f} s bare 'docker run' -> container start")
    print(
        f"             {figures['sandboxed']:.2f} s the same with the sandbox's options "
        "(no network, read-only, limits, mounts)"
    )
    print(
        f"ratio:       pickup {figures['pickup'] / figures['floor']:.2f}x the bare floor, "
        f"{figures['pickup'] / figures['sandboxed']:.2f}x the sandboxed one"
    )


if __name__ == "__main__":
    main()
