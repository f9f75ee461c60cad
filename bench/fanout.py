"""Fifty sites at once: one task for ``sites: ["*"]``, N agents on one bare local registry.

    python bench/fanout.py [--sites 50] [--timeout 180]

Starts N real agents (watch loops, one thread each, in this process: every site has its own
work folder, clones and Docker client) on one bare registry, waits until each has done its
first cycle, pushes one trivial task for every site and times, from the end of the push, when
each site's final result lands on its ``results/<site>`` branch in the registry. Prints the time
until all N landed, the median and the slowest site, and checks that none is lost and that no
site started the task twice (container start events from the engine). Needs a Docker engine and
ptm-test/busybox:latest.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import docker
import yaml

from ptm.agent import Agent
from ptm.registry import init_registry
from ptm.runtimes.docker import DockerRuntime
from ptm.siteconfig import load_site_config
from ptm.watch import run_until_stopped

IMAGE = "ptm-test/busybox:latest"
TASK_ID = "fanout"


def site_names(count: int) -> list[str]:
    return [f"site-{n:03d}" for n in range(1, count + 1)]


def make_agent(folder: Path, registry: Path, site: str) -> Agent:
    document = {
        "ptm": 1,
        "site": site,
        "registry": {"url": str(registry)},
        "workdir": str(folder / site),
        "poll_interval": 30,
        "policy": {"allowed_images": ["ptm-test/.*:.*"], "require_signed_tasks": False},
        "runtime": {"pull": "never"},
    }
    path = folder / f"{site}.yaml"
    path.write_text(yaml.safe_dump(document))
    return Agent(load_site_config(path), DockerRuntime(None))


def push_task(registry: Path, folder: Path) -> float:
    work = folder / "researcher"
    subprocess.run(["git", "clone", "-q", str(registry), str(work)], check=True)
    task = work / "tasks" / TASK_ID
    task.mkdir(parents=True)
    (task / "task.yaml").write_text(f"ptm: 1\nimage: {IMAGE}\nsites: ['*']\ncommand: ['true']\n")
    for args in (["add", "tasks"], ["commit", "-q", "-m", TASK_ID], ["push", "-q"]):
        subprocess.run(["git", *args], cwd=work, check=True)
    return time.monotonic()


def landed(registry: Path, sites: list[str]) -> dict[str, str]:
    """Each site's recorded state for the task on its branch in the registry (one git call)."""
    specs = "".join(f"results/{s}:results/{TASK_ID}/{s}/status.yaml\n" for s in sites)
    done = subprocess.run(
        ["git", "cat-file", "--batch"], cwd=registry, input=specs.encode(), capture_output=True
    )
    states, out = {}, done.stdout
    for site in sites:
        header, _, out = out.partition(b"\n")
        if header.endswith(b"missing"):
            continue
        size = int(header.split()[2])
        blob, out = out[:size], out[size + 1 :]
        states[site] = str(yaml.safe_load(blob)["state"])
    return states


class Starts:
    """Container start events per site (label ptm.site), to see whether any site ran twice."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.count: Counter[str] = Counter()
        self._stream = client.events(
            decode=True, filters={"type": "container", "event": "start", "label": "ptm.task"}
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                site = event.get("Actor", {}).get("Attributes", {}).get("ptm.site", "")
                if site.startswith("site-"):  # the engine may be shared with other work
                    self.count[site] += 1
        except Exception:  # closed at the end
            return

    def close(self) -> None:
        self._stream.close()


def engine_floor(client: docker.DockerClient, count: int) -> float:
    """Seconds for ``count`` bare containers of the same image, all at once, to run to their end
    (create, start, wait, remove) through the engine: what the fan-out cannot beat."""
    began = time.monotonic()

    def one(n: int) -> None:
        client.containers.run(IMAGE, ["true"], remove=True, labels={"ptm-bench": f"floor-{n}"})

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - began


def run(folder: Path, count: int, timeout: float) -> None:
    registry = folder / "registry.git"
    init_registry(registry, bare=True)
    sites = site_names(count)
    agents = [make_agent(folder, registry, site) for site in sites]
    stop = threading.Event()
    threads = [
        threading.Thread(target=run_until_stopped, args=(a, stop), name=a.config.site, daemon=True)
        for a in agents
    ]
    client = docker.from_env(max_pool_size=count + 10)  # the floor runs count containers at once
    starts = Starts(client)
    began = time.monotonic()
    for thread in threads:
        thread.start()
    while not all(a.workdir.load_state().processed for a in agents):
        time.sleep(0.2)
    print(f"{count} agents started and idle in {time.monotonic() - began:.1f} s")
    cpu_before = cpu_seconds()
    pushed = push_task(registry, folder)
    arrived: dict[str, float] = {}
    states: dict[str, str] = {}
    while len(arrived) < count and time.monotonic() - pushed < timeout:
        time.sleep(0.25)
        states = landed(registry, sites)
        now = time.monotonic() - pushed
        for site, state in states.items():
            if state in {"completed", "failed", "crashed", "rejected"}:
                arrived.setdefault(site, now)
    cpu = cpu_seconds() - cpu_before
    missing = [t for t in threads if t.name not in arrived]
    frames = sys._current_frames()
    for thread in missing[:3]:  # where a site that has not delivered is stuck
        frame = frames.get(thread.ident or -1)
        stack = "".join(traceback.format_stack(frame)) if frame else "(not running)\n"
        print(f"--- {thread.name}, alive {thread.is_alive()}:\n{stack}")
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    time.sleep(1)  # the last start events
    starts.close()
    for container in client.containers.list(all=True, filters={"label": "ptm.task"}):
        if container.labels.get("ptm.site", "").startswith("site-"):
            container.remove(force=True)
    print(
        f"CPU used by the agents and their git processes meanwhile: {cpu:.1f} s "
        f"({cpu / count:.2f} s per site, {os.cpu_count()} cores)"
    )
    for agent in agents:
        site = agent.config.site
        if site not in arrived:
            local = agent.ledger.status_of(TASK_ID)
            print(
                f"{site}: registry has {states.get(site, 'nothing')}, its agent recorded "
                f"{local.state if local else 'nothing'} (unpushed: {agent.ledger.unpushed()})"
            )
    floor = engine_floor(client, count)
    print(f"floor: {count} bare containers at once through the engine took {floor:.1f} s")
    if arrived:
        print(f"ratio: the fan-out took {max(arrived.values()) / floor:.2f}x the floor")
    report(count, arrived, states, starts.count)


def cpu_seconds() -> float:
    """User and system time of this process and of the children it has waited for (git)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def report(
    count: int, arrived: dict[str, float], states: dict[str, str], starts: Counter[str]
) -> None:
    times = sorted(arrived.values())
    completed = sum(1 for s in states.values() if s == "completed")
    twice = sorted(site for site, n in starts.items() if n > 1)
    if times:
        print(
            f"all {count} results landed in {times[-1]:.1f} s"
            if len(times) == count
            else f"only {len(times)} of {count} results landed within the timeout"
        )
        print(
            f"per site: median {statistics.median(times):.1f} s, first {times[0]:.1f} s, "
            f"slowest {times[-1]:.1f} s; {times[-1] / 60:.2f}x the one-minute goal"
        )
    print(
        f"completed {completed}/{count}; lost {count - len(arrived)}; "
        f"started twice: {', '.join(twice) if twice else 'none'}"
    )
    if len(arrived) < count or twice:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=50, help="agents (default 50)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for results")
    parser.add_argument("--log", type=Path, help="write the agents' log (INFO) to this file")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.log else logging.WARNING,
        filename=args.log,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    with tempfile.TemporaryDirectory(prefix="ptm-fanout-") as tmp:
        run(Path(tmp), args.sites, args.timeout)


if __name__ == "__main__":
    main()
