"""Pickup from an ``ssh://`` registry with a one-second poll, and the idle agent's CPU use.

    python -m bench.remote_pickup [--idle 10] [--pickups 9] [--poll 1] [--no-local]
                                  [--no-accept-env]

A real ``sshd`` on loopback (tests/ssh_servers.py, with ``AcceptEnv GIT_PROTOCOL``) serves a
bare registry as ``ssh://root@127.0.0.1:PORT/abs/path``; a real ``ptm agent run`` polls it
(one shared SSH connection, ptm/ssh_share.py; each poll an ``ls-refs`` on it, ptm/ref_poll.py).
Measured over ``--idle`` seconds of idling: the agent's CPU (its children included), the
shared connection's master (not the agent's child once it backgrounds itself), and the
registry host's side (sshd and a git-upload-pack per poll), which is the git host's cost, not
the site's. Then from each push (the branch's ref written in the registry) to the container's
start event, the same figures for the local watch mode (bench/idle_and_pickup.py), and the
floor: a bare ``docker run`` to its start event. ``--no-accept-env`` runs an sshd that drops
GIT_PROTOCOL (each poll a git fetch). Run from the repository's root. Needs a Docker engine,
the test image and OpenSSH's sshd.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import yaml

from bench.idle_and_pickup import (
    FLOOR_KEY,
    StartEvents,
    cpu_seconds,
    final_state,
    floor_pickup,
    push_task,
    running_agent,
    site_document,
    tree_cpu_seconds,
    wait_until,
)
from bench.idle_and_pickup import measure as measure_local
from ptm.registry import init_registry
from tests.ssh_servers import SshServer, make_ssh_key, running_sshd


def master_pid(socket: Path) -> int | None:
    """The shared connection's master: the ssh process naming its control socket."""
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        named = str(socket).encode() in b" ".join(command)
        if command[0].endswith(b"ssh") and b"-M" in command and named:
            return int(entry.name)
    return None


def idle_figures(agent: int, master: int | None, server: int, seconds: float) -> dict[str, float]:
    """Each side's share of a core over ``seconds`` of idling."""
    sides: dict[str, Callable[[], float]] = {
        "agent": lambda: tree_cpu_seconds(agent),
        "master": lambda: cpu_seconds(master) if master else 0.0,
        "host": lambda: tree_cpu_seconds(server),
    }
    before = {name: read() for name, read in sides.items()}
    began = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - began
    return {f"idle_{name}": (read() - before[name]) / wall for name, read in sides.items()}


def measure_remote(folder: Path, args: argparse.Namespace) -> dict[str, float]:
    key = make_ssh_key(folder / "keys", "site")
    registry = folder / "registry.git"
    init_registry(registry, bare=True)
    work = folder / "researcher"
    subprocess.run(["git", "clone", "-q", str(registry), str(work)], check=True)
    client = docker.from_env()
    tasks, floors = StartEvents(client, "ptm.task"), StartEvents(client, FLOOR_KEY)
    sshd = running_sshd(folder / "sshd", [key.public_line], git_protocol=not args.no_accept_env)
    try:
        with sshd as server:
            site = config(folder, server, key.private, registry, args.poll)
            with running_agent(folder, site, client) as agent:
                figures, pickups = measure_agent(agent.pid, server, work, registry, tasks, args)
        floor = [floor_pickup(floors, f"bare-r{n}", []) for n in range(args.pickups)]
    finally:
        tasks.close()
        floors.close()
    return {
        **figures,
        "pickup": statistics.median(pickups),
        "worst": max(pickups),
        "floor": statistics.median(floor),
    }


def measure_agent(
    agent: int,
    server: SshServer,
    work: Path,
    registry: Path,
    tasks: StartEvents,
    args: argparse.Namespace,
) -> tuple[dict[str, float], list[float]]:
    """Idle figures, then the pickups one push at a time."""
    time.sleep(2)
    master = master_pid(args.workdir / "ssh" / "c")
    server_pid = int((server.folder / "sshd.pid").read_text())
    figures = idle_figures(agent, master, server_pid, args.idle)
    pickups = []
    # Each push at a random moment of the poll's period (the same moments in every run): a
    # push right after the agent's own result push would catch its cycles in step.
    phase = random.Random(0)
    for n in range(args.pickups):
        time.sleep(0.3 + phase.uniform(0, args.poll))
        task_id = f"remote-{n}"
        pushed = push_task(work, registry, task_id)
        pickups.append(tasks.wait(task_id) - pushed)
        wait_until(lambda t=task_id: final_state(registry, t), 60, f"{task_id}'s result")
    return figures, pickups


def config(folder: Path, server: SshServer, key: Path, registry: Path, poll: float) -> Path:
    known_hosts = server.known_hosts(folder / "known_hosts")
    url = server.url(str(registry).lstrip("/"))
    settings = {"url": url, "ssh_key": str(key), "known_hosts": str(known_hosts)}
    path = folder / "site.yaml"  # a short work folder below: the master's socket lives in it
    path.write_text(yaml.safe_dump(site_document(settings, folder / "w", poll)))
    return path


def report(remote: dict[str, float], args: argparse.Namespace) -> None:
    agent, master, host = (remote[f"idle_{n}"] * 100 for n in ("agent", "master", "host"))
    print(
        f"ssh registry: idle agent {agent:.2f} % of a core over {args.idle:g} s, polling every "
        f"{args.poll:g} s (goal < 1 %); with its ssh master {agent + master:.2f} %"
    )
    print(f"              registry host's side (sshd, git-upload-pack per poll): {host:.2f} %")
    print(
        f"ssh registry: pickup {remote['pickup']:.2f} s push -> container start, median of "
        f"{args.pickups} (worst {remote['worst']:.2f} s; goal < 1.5 s), "
        f"{remote['pickup'] / remote['floor']:.1f}x the floor"
    )
    print(f"floor:        {remote['floor']:.2f} s bare 'docker run' -> container start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=10, help="seconds of idling to measure")
    parser.add_argument("--pickups", type=int, default=9, help="tasks to push, one at a time")
    parser.add_argument("--poll", type=float, default=1.0, help="the site's poll_interval")
    parser.add_argument("--no-local", action="store_true", help="skip the local watch mode")
    parser.add_argument(
        "--no-accept-env", action="store_true", help="an sshd without AcceptEnv GIT_PROTOCOL"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ptm-b-", dir="/tmp") as tmp:
        args.workdir = Path(tmp) / "w"
        report(measure_remote(Path(tmp), args), args)
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
