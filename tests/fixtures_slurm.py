"""Slurm fixtures: a real single-node cluster from Debian's ``munge``, ``slurmctld`` and
``slurmd``, on free loopback ports with every file in a temporary folder, stopped (by pid)
at the end of the session. ``scripts/peers-slurm setup`` installs the packages.

- ``slurm_cluster``: the running cluster (its ``slurm.conf``; commands find it through
  ``SLURM_CONF``, which ``slurm_env`` sets for a test). Compute node: this machine, running
  containers with the rootful Podman of ``podman_engine`` (its storage, its config).

Without the packages these fixtures skip locally and fail in CI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures_docker import free_loopback_port, unavailable
from tests.fixtures_podman import PodmanEngine

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")


@dataclass(frozen=True)
class SlurmCluster:
    folder: Path
    conf: Path
    podman: PodmanEngine

    def environment(self) -> dict[str, str]:
        """What the agent's process needs: Slurm's config, and (passed on to the jobs by
        sbatch) the node engine's."""
        return {"SLURM_CONF": str(self.conf), **self.podman.environment()}

    def podman_options(self) -> tuple[str, ...]:
        root = self.podman.folder
        return ("--root", str(root / "root"), "--runroot", str(root / "run"))


def slurm_conf(folder: Path, node: str, ctld_port: int, slurmd_port: int) -> str:
    memory_mib = 4096
    return f"""ClusterName=ptmtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.sock
CryptoType=crypto/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory={memory_mib} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=other Nodes=ALL MaxTime=INFINITE State=UP
"""


def start_daemons(folder: Path, conf: Path) -> None:
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge = [
        "/usr/sbin/munged", f"--socket={folder}/munge.sock", f"--key-file={key}",
        f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
        f"--seed-file={folder}/munged.seed", "--force",
    ]  # fmt: skip
    subprocess.run(munge, check=True, capture_output=True, timeout=30)
    for daemon in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd"):
        subprocess.run([daemon, "-f", str(conf)], check=True, capture_output=True, timeout=30)


def wait_until_idle(cluster: SlurmCluster) -> None:
    env = {**os.environ, **cluster.environment()}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["sinfo", "--noheader", "--format=%t"], env=env, capture_output=True, text=True
        )
        if done.returncode == 0 and done.stdout.split()[:1] == ["idle"]:
            return
        time.sleep(0.3)
    logs = "\n".join(
        (cluster.folder / name).read_text(errors="replace")[-3000:]
        for name in ("slurmctld.log", "slurmd.log")
        if (cluster.folder / name).exists()
    )
    pytest.fail(f"the test Slurm cluster did not come up:\n{logs}")


def stop_daemons(folder: Path) -> None:
    for name in ("slurmd", "slurmctld", "munged"):
        with contextlib.suppress(OSError, ValueError):
            pid = int((folder / f"{name}.pid").read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def slurm_cluster(podman_engine: PodmanEngine) -> Iterator[SlurmCluster]:
    with slurm_service(podman_engine) as cluster:
        yield cluster


@contextlib.contextmanager
def slurm_service(podman: PodmanEngine) -> Iterator[SlurmCluster]:
    """The cluster, from start to stop (also for bench/runtimes.py)."""
    missing = [daemon for daemon in DAEMONS if not Path(daemon).exists()]
    if missing or shutil.which("sbatch") is None:
        lacking = ", ".join(missing) or "sbatch"
        unavailable(f"Slurm is not installed ({lacking}); scripts/peers-slurm setup installs it")
    # Short: the munge socket path must fit a sockaddr_un, and the node's name is this host's.
    folder = Path(f"/tmp/ptm-slurm-{os.getpid()}")
    for name in ("state", "spool"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    node = socket.gethostname().split(".")[0]
    conf.write_text(slurm_conf(folder, node, free_loopback_port(), free_loopback_port()))
    cluster = SlurmCluster(folder, conf, podman)
    try:
        start_daemons(folder, conf)
        wait_until_idle(cluster)
        yield cluster
    finally:
        stop_daemons(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def slurm_env(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The cluster's environment for one test; its jobs are cancelled afterwards."""
    for key, value in slurm_cluster.environment().items():
        monkeypatch.setenv(key, value)
    yield
    subprocess.run(["scancel", "--full", f"--user={os.getuid()}"], capture_output=True, timeout=60)
