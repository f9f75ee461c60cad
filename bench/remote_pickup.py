"""Pickup from an ``ssh://`` registry with a one-second poll, and the idle agent's CPU use.

    python -m bench.remote_pickup [--idle 10] [--pickups 5] [--poll 1] [--no-local]

A real ``sshd`` on loopback (tests/ssh_servers.py) serves a bare registry as
``ssh://root@127.0.0.1:PORT/abs/path``; a real ``ptm agent run`` polls it (one shared SSH
connection, ptm/ssh_share.py). Measured: the agent's CPU over ``--idle`` seconds of idling
(its git and ssh children included), and from each push (the branch's ref written in the
registry) to the container's start event. Then the same figures for the local watch mode
(bench/idle_and_pickup.py), and the floor: a bare ``docker run`` to its start event.
Run from the repository's root. Needs a Docker engine, the test image and OpenSSH's sshd.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import yaml

from bench.idle_and_pickup import (
    AGENT_RUN,
    FLOOR_KEY,
    SITE,
    StartEvents,
    cpu_seconds,
    final_state,
    floor_pickup,
    push_task,
    wait_until,
)
from bench.idle_and_pickup import measure as measure_local
from ptm.registry import init_registry
from ptm.workdir import WorkDir
from tests.ssh_servers import make_ssh_key, running_sshd


def remote_config(folder: Path, url: str, key: Path, known_hosts: Path, poll: float) -> Path:
    document = {
        "ptm": 1,
        "site": SITE,
        "registry": {"url": url, "ssh_key": str(key), "known_hosts": str(known_hosts)},
        "workdir": str(folder / "w"),  # short: the shared connection's socket lives in it
        "poll_interval": poll,
        "policy": {"allowed_images": ["ptm-test/.*:.*"], "require_signed_tasks": False},
        "runtime": {"pull": "never"},
    }
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def measure_remote(folder: Path, args: argparse.Namespace) -> dict[str, float]:
    key = make_ssh_key(folder / "keys", "site")
    registry = folder / "registry.git"
    init_registry(registry, bare=True)
    work = folder / "researcher"
    subprocess.run(["git", "clone", "-q", str(registry), str(work)], check=True)
    client = docker.from_env()
    tasks = StartEvents(client, "ptm.task")
    floors = StartEvents(client, FLOOR_KEY)
    with running_sshd(folder / "sshd", [key.public_line]) as server:
        known_hosts = server.known_hosts(folder / "known_hosts")
        url = server.url(str(registry).lstrip("/"))
        config = remote_config(folder, url, key.private, known_hosts, args.poll)
        with open(folder / "agent.log", "wb") as log:
            agent = subprocess.Popen(
                [*AGENT_RUN, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            workdir = WorkDir(folder / "w")
            wait_until(lambda: workdir.load_state().processed, 60, "the agent's first cycle")
            time.sleep(2)
            cpu_before, wall_before = cpu_seconds(agent.pid), time.monotonic()
            time.sleep(args.idle)
            idle_cpu = (cpu_seconds(agent.pid) - cpu_before) / (time.monotonic() - wall_before)
            pickups = []
            for n in range(args.pickups):
                task_id = f"remote-{n}"
                pushed = push_task(work, registry, task_id)
                pickups.append(tasks.wait(task_id) - pushed)
                wait_until(lambda t=task_id: final_state(registry, t), 60, f"{task_id}'s result")
                time.sleep(0.3)  # let the push of the result settle: the next push is fresh
            floor = [floor_pickup(floors, f"bare-r{n}", []) for n in range(args.pickups)]
        finally:
            agent.terminate()
            agent.wait(timeout=30)
            tasks.close()
            floors.close()
            for container in client.containers.list(
                all=True, filters={"label": f"ptm.site={SITE}"}
            ):
                container.remove(force=True)
    return {
        "idle_cpu": idle_cpu,
        "pickup": statistics.median(pickups),
        "worst": max(pickups),
        "floor": statistics.median(floor),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=10, help="seconds of idling to measure")
    parser.add_argument("--pickups", type=int, default=5, help="tasks to push, one at a time")
    parser.add_argument("--poll", type=float, default=1.0, help="the site's poll_interval")
    parser.add_argument("--no-local", action="store_true", help="skip the local watch mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ptm-b-", dir="/tmp") as tmp:
        remote = measure_remote(Path(tmp), args)
    print(
        f"ssh registry: idle agent {remote['idle_cpu'] * 100:.2f} % of a core over "
        f"{args.idle:g} s, polling every {args.poll:g} s (goal < 1 %)"
    )
    print(
        f"ssh registry: pickup {remote['pickup']:.2f} s push -> container start, median of "
        f"{args.pickups} (worst {remote['worst']:.2f} s; goal < 1.5 s), "
        f"{remote['pickup'] / remote['floor']:.1f}x the floor"
    )
    print(f"floor:        {remote['floor']:.2f} s bare 'docker run' -> container start")
    if not args.no_local:
        local_args = argparse.Namespace(idle=args.idle, pickups=3, poll=30)
        with tempfile.TemporaryDirectory(prefix="ptm-b-", dir="/tmp") as tmp:
            local = measure_local(Path(tmp), local_args)
        print(
            f"local watch:  idle agent {local['idle_cpu'] * 100:.2f} % of a core, pickup "
            f"{local['pickup']:.2f} s median of 3, {local['pickup'] / local['floor']:.1f}x the "
            f"floor ({local['floor']:.2f} s)"
        )


if __name__ == "__main__":
    main()
