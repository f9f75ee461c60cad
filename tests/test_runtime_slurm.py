"""SlurmRuntime on a real single-node cluster (munge, slurmctld, slurmd from Debian), whose
node runs each job's container with the test Podman: the Docker backend's tests of running,
limits, logs and the sandbox seen from inside run here again unchanged (this module's
fixtures give them the Slurm runtime), then what is Slurm's own: the job's limits, finding
jobs again after a restart, and ends told apart without an accounting database."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from ptm.errors import ContainerError, RuntimeUnavailable
from ptm.main import main
from ptm.runtimes import open_site_runtime
from ptm.runtimes.base import ContainerSpec
from ptm.runtimes.slurm import SlurmRuntime
from ptm.siteconfig import RuntimeSettings, SlurmSettings
from tests import test_runtime_docker as docker_tests
from tests.agent_support import Researcher, remote_file, remote_status, write_site_config
from tests.fixtures_docker import RUN_ID, TEST_IMAGE
from tests.fixtures_podman import PodmanEngine
from tests.fixtures_slurm import SlurmCluster
from tests.test_runtime_docker import (  # noqa: F401  (collected and run here against Slurm)
    SITE,
    run_to_end,
    shell,
    test_all_capabilities_are_dropped,
    test_container_sees_the_contract_and_its_output_lands_on_the_host,
    test_cpu_limit_is_set,
    test_has_no_network_but_loopback,
    test_host_or_shared_network_is_refused,
    test_image_default_command_runs_when_task_gives_none,
    test_long_log_keeps_its_end_behind_a_marker,
    test_memory_hog_is_oom_killed,
    test_memory_limit_is_set_swap_included,
    test_mount_over_the_sandbox_is_refused,
    test_never_with_a_missing_image_names_it,
    test_no_new_privileges,
    test_nonzero_exit_code_is_reported,
    test_pids_limit_holds,
    test_root_filesystem_and_contract_inputs_are_read_only,
    test_runs_as_a_non_root_user,
    test_site_data_is_mounted_read_only,
    test_site_variables_are_passed_but_ptm_ones_cannot_be_overridden,
    test_stdout_and_stderr_both_reach_the_log,
    test_time_limit_kills_the_container,
    test_tmp_is_a_small_tmpfs,
)

spec = docker_tests.spec  # the same task spec fixture


@pytest.fixture(scope="module")
def docker_client(podman_engine: PodmanEngine) -> Iterator[docker.DockerClient]:
    """The node's Podman; the docker test guard removes leftover containers through it."""
    client = podman_engine.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def test_image(podman_engine: PodmanEngine) -> str:
    return TEST_IMAGE


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Every test folder is under pytest's base folder: on one node, that is the shared storage.
    return tmp_path_factory.getbasetemp()


def slurm_settings(cluster: SlurmCluster, shared: Path, **changes: object) -> SlurmSettings:
    settings = SlurmSettings(shared_dir=shared, node_engine_options=cluster.podman_options())
    return replace(settings, **changes)  # type: ignore[arg-type]


@pytest.fixture
def docker_runtime(
    slurm_cluster: SlurmCluster, slurm_env: None, shared_dir: Path
) -> Iterator[SlurmRuntime]:
    runtime = SlurmRuntime(slurm_settings(slurm_cluster, shared_dir), job_label=RUN_ID)
    yield runtime
    for ref in runtime.find_containers(SITE):  # the Docker tests leave them to a guard
        runtime.remove(ref)


@pytest.fixture
def second_runtime(slurm_cluster: SlurmCluster, slurm_env: None, shared_dir: Path) -> SlurmRuntime:
    """Another runtime on the same cluster: the agent after a restart."""
    return SlurmRuntime(slurm_settings(slurm_cluster, shared_dir), job_label=RUN_ID)


def job_line(runtime: SlurmRuntime, spec: ContainerSpec, field: str) -> str:
    """One field of ``scontrol show job`` for the only job of ``spec``'s site."""
    [ref] = runtime.find_containers(spec.site)
    job_id = runtime.settings.shared_dir / "jobs" / ref.site / ref.container_id / "job-id"
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id.read_text()], capture_output=True, text=True
    ).stdout
    values = dict(word.split("=", 1) for word in out.split() if "=" in word)
    return values[field]


# ---- Slurm's own ---------------------------------------------------------------------------


def test_ping_names_slurm_and_the_node_engine(docker_runtime: SlurmRuntime) -> None:
    assert docker_runtime.ping().startswith("slurm 22.") or "slurm" in docker_runtime.ping()
    assert docker_runtime.ping().endswith("node engine podman")


def test_missing_shared_folder_is_runtime_unavailable(
    slurm_cluster: SlurmCluster, slurm_env: None, tmp_path: Path
) -> None:
    missing = SlurmRuntime(slurm_settings(slurm_cluster, tmp_path / "nowhere"))
    with pytest.raises(RuntimeUnavailable, match="nowhere"):
        missing.ping()


def test_limits_partition_and_options_become_the_jobs(
    slurm_cluster: SlurmCluster, slurm_env: None, shared_dir: Path, spec: ContainerSpec
) -> None:
    runtime = SlurmRuntime(
        slurm_settings(slurm_cluster, shared_dir, partition="other", sbatch_options=("--hold",)),
        job_label=RUN_ID,
    )
    limited = shell(spec, "true", memory_bytes=256 * 1024**2, cpus=1.5, timeout_s=600.0)
    ref = runtime.start(limited, runtime.ensure_image(spec.image, policy="never"))
    assert job_line(runtime, limited, "JobState") == "PENDING"  # --hold keeps it there
    assert job_line(runtime, limited, "Partition") == "other"
    assert job_line(runtime, limited, "NumCPUs") == "2"
    assert job_line(runtime, limited, "MinMemoryNode") == "384M"  # 256 MiB + the engine's 128
    assert job_line(runtime, limited, "TimeLimit") == "00:12:00"  # 600 s + 2 min, in minutes
    assert job_line(runtime, limited, "Requeue") == "0"
    assert (
        job_line(runtime, limited, "Comment") == f"ptm/{RUN_ID}/{SITE}/age-stats/{ref.container_id}"
    )
    assert runtime.find_running(SITE) == [ref]
    runtime.remove(ref)
    assert runtime.find_containers(SITE) == []


def test_values_reach_the_container_literally_through_the_job_script(
    docker_runtime: SlurmRuntime, spec: ContainerSpec
) -> None:
    hostile = 'a\'b "c" $(touch /ptm/output/pwned) `id` ; exit 7'
    script = 'printf "%s|" "$SITE_VALUE" "$@"'
    outcome = run_to_end(
        docker_runtime,
        replace(
            spec, command=("sh", "-c", script, "sh", hostile), environment={"SITE_VALUE": hostile}
        ),
    )
    assert (outcome.exit_code, outcome.log.decode()) == (0, f"{hostile}|{hostile}|")
    assert list(spec.output_dir.iterdir()) == []


def test_files_off_the_shared_folder_are_refused(
    slurm_cluster: SlurmCluster, slurm_env: None, spec: ContainerSpec, tmp_path: Path
) -> None:
    runtime = SlurmRuntime(slurm_settings(slurm_cluster, tmp_path / "shared"), job_label=RUN_ID)
    (tmp_path / "shared").mkdir()
    with pytest.raises(ContainerError, match=r"runtime\.slurm\.shared_dir"):
        runtime.start(spec, runtime.ensure_image(spec.image, policy="never"))


def test_restarted_agent_finds_its_job_and_its_end(
    docker_runtime: SlurmRuntime, second_runtime: SlurmRuntime, spec: ContainerSpec
) -> None:
    ref = docker_runtime.start(
        shell(spec, "sleep 3; echo done"), docker_runtime.ensure_image(spec.image, policy="never")
    )
    assert second_runtime.find_running(SITE) == [ref]
    outcome = second_runtime.wait(ref, timeout_s=120)
    assert (outcome.exit_code, outcome.log) == (0, b"done\n")
    assert second_runtime.find_running(SITE) == []
    assert second_runtime.find_containers(SITE) == [ref]
    second_runtime.remove(ref)
    assert second_runtime.find_containers(SITE) == []


def test_a_job_id_lost_in_a_crash_is_found_again_by_the_comment(
    docker_runtime: SlurmRuntime, second_runtime: SlurmRuntime, spec: ContainerSpec
) -> None:
    ref = docker_runtime.start(
        shell(spec, "echo ran"), docker_runtime.ensure_image(spec.image, policy="never")
    )
    job_file = docker_runtime.settings.shared_dir / "jobs" / SITE / ref.container_id / "job-id"
    job_id = job_file.read_text()
    job_file.unlink()  # as if the agent died between sbatch and writing it down
    assert second_runtime.find_containers(SITE) == [ref]
    assert job_file.read_text() == job_id
    assert second_runtime.wait(ref, timeout_s=120).exit_code == 0


def test_cancel_scancels_and_the_container_stops(
    docker_runtime: SlurmRuntime, spec: ContainerSpec, podman_engine: PodmanEngine
) -> None:
    ref = docker_runtime.start(
        shell(spec, "echo working; sleep 120"),
        docker_runtime.ensure_image(spec.image, policy="never"),
    )
    log = docker_runtime.settings.shared_dir / "jobs" / SITE / ref.container_id / "log"
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    began = time.monotonic()
    outcome = docker_runtime.wait(ref, timeout_s=300, cancelled=lambda: True)
    assert outcome.cancelled and outcome.exit_code is None and outcome.log == b"working\n"
    assert time.monotonic() - began < 30
    assert docker_runtime.find_running(SITE) == []
    client = podman_engine.client()
    try:
        names = [c.name for c in client.containers.list(all=True)]
    finally:
        client.close()
    assert not any(ref.container_id in name for name in names)


def test_time_limit_counts_from_the_jobs_start_after_a_restart(
    docker_runtime: SlurmRuntime, second_runtime: SlurmRuntime, spec: ContainerSpec
) -> None:
    ref = docker_runtime.start(
        shell(spec, "sleep 120"), docker_runtime.ensure_image(spec.image, policy="never")
    )
    started = docker_runtime.settings.shared_dir / "jobs" / SITE / ref.container_id / "started"
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(5)
    began = time.monotonic()
    outcome = second_runtime.wait(ref, timeout_s=12)
    assert outcome.timed_out and outcome.exit_code is None
    assert time.monotonic() - began < 11  # counted from the wait, it would take 12 s


def test_kill_then_wait_is_not_an_oom_kill_and_remove_is_idempotent(
    docker_runtime: SlurmRuntime, spec: ContainerSpec
) -> None:
    ref = docker_runtime.start(
        shell(spec, "sleep 120"), docker_runtime.ensure_image(spec.image, policy="never")
    )
    docker_runtime.kill(ref)
    docker_runtime.kill(ref)
    outcome = docker_runtime.wait(ref, timeout_s=60)
    assert outcome.exit_code is None and not outcome.oom_killed
    docker_runtime.remove(ref)
    docker_runtime.remove(ref)
    assert docker_runtime.find_containers(SITE) == []
    with pytest.raises(ContainerError, match="is gone"):
        docker_runtime.wait(ref, timeout_s=1)


# ---- the agent on Slurm ----------------------------------------------------------------------


def test_agent_cycle_on_slurm_completes_fails_and_times_out(
    bare_registry: Path, tmp_path: Path, slurm_cluster: SlurmCluster, slurm_env: None
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("done", "echo 41 > /ptm/output/mean.txt; echo finished")
    researcher.submit("broken", "echo 'no such column' >&2; exit 3")
    researcher.submit("slow", "echo begun; sleep 120", timeout=5)
    slurm = {
        "shared_dir": str(tmp_path),
        "node_engine_options": list(slurm_cluster.podman_options()),
    }
    config = write_site_config(
        tmp_path, "hospital-a", bare_registry, runtime={"engine": "slurm", "slurm": slurm}
    )
    assert main(["agent", "check", "--config", str(config)]) == 0
    assert main(["agent", "once", "--config", str(config)]) == 0
    states = {
        task: (remote_status(bare_registry, task) or {}) for task in ("done", "broken", "slow")
    }
    assert {task: status.get("state") for task, status in states.items()} == {
        "done": "completed",
        "broken": "failed",
        "slow": "timed_out",
    }
    assert remote_file(bare_registry, "done", "output/mean.txt") == "41"
    assert states["broken"]["exit_code"] == 3
    assert "begun" in remote_file(bare_registry, "slow", "log.txt")
    assert states["done"]["image_id"].startswith("sha256:")
    assert not list((tmp_path / "jobs" / "hospital-a").iterdir())  # removed once recorded


def test_site_config_chooses_slurm(slurm_cluster: SlurmCluster, shared_dir: Path) -> None:
    settings = RuntimeSettings(engine="slurm", slurm=slurm_settings(slurm_cluster, shared_dir))
    runtime = open_site_runtime(settings)
    assert isinstance(runtime, SlurmRuntime) and runtime.settings == settings.slurm
