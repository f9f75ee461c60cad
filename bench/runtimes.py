"""What each runtime adds to a task, on the same machine: from the agent asking for the image
until the container's command is running (pickup to start), and the whole of one trivial task
(image, start, wait, remove: the per-task overhead).

    python bench/runtimes.py [--tasks 3] [--engines docker podman slurm]

Needs what the tests need (scripts/test sets it up): a Docker engine (DOCKER_HOST) with the
image ptm-test/busybox:latest, podman, and Slurm's packages. Podman and the single-node Slurm
cluster are started privately for the run, as the tests start them, and stopped afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' fixtures start peers

from ptm.runtimes.base import ContainerSpec, Runtime
from ptm.runtimes.docker import DockerRuntime
from ptm.runtimes.podman import PodmanRuntime
from ptm.runtimes.slurm import SlurmRuntime
from ptm.siteconfig import SlurmSettings
from tests.fixtures_docker import TEST_IMAGE
from tests.fixtures_podman import podman_service
from tests.fixtures_slurm import slurm_service

SITE = "bench-site"
MARKER_POLL_S = 0.01


@contextlib.contextmanager
def open_engine(name: str, scratch: Path) -> Iterator[Runtime]:
    if name == "docker":
        yield DockerRuntime(None)
        return
    with podman_service(scratch / "podman", user=None) as podman:
        if name == "podman":
            yield PodmanRuntime(podman.socket)
            return
        with slurm_service(podman) as cluster:
            os.environ.update(cluster.environment())
            settings = SlurmSettings(
                shared_dir=scratch, node_engine_options=cluster.podman_options()
            )
            yield SlurmRuntime(settings)


def task_spec(scratch: Path, number: int) -> ContainerSpec:
    folder = scratch / f"task-{number}"
    (folder / "output").mkdir(parents=True)
    (folder / "input").mkdir()
    (folder / "config.yaml").write_text("{}\n")
    return ContainerSpec(
        task_id=f"bench-{number}",
        site=SITE,
        image=TEST_IMAGE,
        command=("sh", "-c", "echo up > /ptm/output/started"),
        environment={},
        config_file=folder / "config.yaml",
        input_dir=folder / "input",
        output_dir=folder / "output",
        memory_bytes=64 * 1024**2,
        cpus=0.5,
        timeout_s=60.0,
    )


def one_task(runtime: Runtime, spec: ContainerSpec) -> tuple[float, float]:
    """(pickup to start, whole task) in seconds."""
    began = time.perf_counter()
    image = runtime.ensure_image(spec.image, policy="never")
    ref = runtime.start(spec, image)
    marker = spec.output_dir / "started"
    while not marker.exists():
        time.sleep(MARKER_POLL_S)
    running = time.perf_counter()
    outcome = runtime.wait(ref, timeout_s=60)
    runtime.remove(ref)
    if outcome.exit_code != 0:
        raise SystemExit(f"the bench task failed: {outcome}")
    return running - began, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3, help="tasks per runtime (default 3)")
    parser.add_argument("--engines", nargs="+", default=["docker", "podman", "slurm"])
    args = parser.parse_args()
    print(
        f"{'runtime':>8}  {'pickup to start s':>17}  {'per task s':>10}   (median of {args.tasks})"
    )
    for name in args.engines:
        with tempfile.TemporaryDirectory(prefix=f"ptm-bench-{name}-") as folder:
            scratch = Path(folder)
            with open_engine(name, scratch) as runtime:
                timings = [one_task(runtime, task_spec(scratch, n)) for n in range(args.tasks)]
        start = statistics.median(t[0] for t in timings)
        whole = statistics.median(t[1] for t in timings)
        print(f"{name:>8}  {start:17.2f}  {whole:10.2f}", flush=True)


if __name__ == "__main__":
    main()
