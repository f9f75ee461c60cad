"""PodmanRuntime against a real, private ``podman system service``: every test the Docker
backend has about running, limits, pulls, re-attaching and the sandbox seen from inside a
container runs here again, unchanged, on Podman (this module's fixtures replace the engine the
imported tests get). Then what is Podman's own: OOM kills it does not report, and rootless
Podman on cgroup v1, where limits cannot hold."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from ptm.errors import ContainerError, RuntimeUnavailable
from ptm.runtimes import open_runtime, open_site_runtime
from ptm.runtimes.base import ContainerSpec
from ptm.runtimes.podman import PodmanRuntime, default_socket, limits_hold
from ptm.siteconfig import PodmanSettings, RuntimeSettings
from tests import test_runtime_docker as docker_tests
from tests.fixtures_docker import RUN_ID, RUN_LABEL, TEST_IMAGE, ImageRegistry, registry_server
from tests.fixtures_podman import PodmanEngine, PodmanImageRegistry
from tests.test_runtime_docker import (  # noqa: F401  (collected and run here against Podman)
    SITE,
    run_to_end,
    shell,
    test_all_capabilities_are_dropped,
    test_always_sees_a_moved_tag_but_if_missing_keeps_the_local_one,
    test_cancel_kills_the_container,
    test_container_sees_the_contract_and_its_output_lands_on_the_host,
    test_cpu_limit_is_set,
    test_digest_pinned_reference_resolves_to_exactly_that_digest,
    test_has_no_network_but_loopback,
    test_host_or_shared_network_is_refused,
    test_image_default_command_runs_when_task_gives_none,
    test_kill_and_remove_are_idempotent,
    test_local_image_without_registry_has_an_id_but_no_digest,
    test_long_log_keeps_its_end_behind_a_marker,
    test_memory_hog_is_oom_killed,
    test_memory_limit_is_set_swap_included,
    test_mount_over_the_sandbox_is_refused,
    test_never_with_a_missing_image_names_it,
    test_no_new_privileges,
    test_nonzero_exit_code_is_reported,
    test_other_sites_containers_are_not_found,
    test_pids_limit_holds,
    test_pinned_digest_the_registry_lacks_is_an_error,
    test_root_filesystem_and_contract_inputs_are_read_only,
    test_runs_as_a_non_root_user,
    test_site_data_is_mounted_read_only,
    test_site_variables_are_passed_but_ptm_ones_cannot_be_overridden,
    test_stdout_and_stderr_both_reach_the_log,
    test_time_limit_kills_the_container,
    test_tmp_is_a_small_tmpfs,
    test_unknown_network_is_a_container_error,
    test_unreachable_registry_is_a_container_error,
)

# ---- the imported tests' fixtures, on Podman ---------------------------------------------------

spec = docker_tests.spec  # the same task spec fixture


@pytest.fixture(scope="module")
def docker_client(podman_engine: PodmanEngine) -> Iterator[docker.DockerClient]:
    """The Docker SDK on Podman's socket; the docker test guard cleans up through it too."""
    client = podman_engine.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def test_image(podman_engine: PodmanEngine) -> str:
    return TEST_IMAGE  # imported by the podman_engine fixture


@pytest.fixture(scope="module")
def image_registry(
    podman_engine: PodmanEngine,
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ImageRegistry]:
    address = podman_engine.registry_address  # the one its registries.conf allows over HTTP
    with registry_server(tmp_path_factory.mktemp("podman-registry"), address):
        yield PodmanImageRegistry(address, docker_client, podman_engine)


@pytest.fixture
def docker_runtime(podman_engine: PodmanEngine) -> Iterator[PodmanRuntime]:
    runtime = PodmanRuntime(podman_engine.socket, labels={RUN_LABEL: RUN_ID})
    yield runtime
    runtime.close()


@pytest.fixture
def second_runtime(podman_engine: PodmanEngine) -> Iterator[PodmanRuntime]:
    """Another runtime on the same service: the agent after a restart."""
    runtime = PodmanRuntime(podman_engine.socket, labels={RUN_LABEL: RUN_ID})
    yield runtime
    runtime.close()


# The Docker tests of re-attaching, with more room: starting a container through Podman takes
# over a second on a busy machine, and a kill half a second.


def test_restarted_agent_finds_and_reattaches_to_a_running_container(
    docker_runtime: PodmanRuntime, second_runtime: PodmanRuntime, spec: ContainerSpec
) -> None:
    ref = docker_runtime.start(
        shell(spec, "sleep 5; echo done"), docker_runtime.ensure_image(spec.image, policy="never")
    )
    docker_runtime.close()
    assert second_runtime.find_running(SITE) == [ref]
    outcome = second_runtime.wait(ref, timeout_s=60)
    assert (outcome.exit_code, outcome.log) == (0, b"done\n")
    assert second_runtime.find_running(SITE) == []
    assert second_runtime.find_containers(SITE) == [ref]


def test_time_limit_counts_from_the_containers_start_after_a_restart(
    docker_runtime: PodmanRuntime, second_runtime: PodmanRuntime, spec: ContainerSpec
) -> None:
    ref = docker_runtime.start(
        shell(spec, "sleep 60"), docker_runtime.ensure_image(spec.image, policy="never")
    )
    time.sleep(5)
    began = time.monotonic()
    outcome = second_runtime.wait(ref, timeout_s=12)
    assert outcome.timed_out
    assert time.monotonic() - began < 11  # counted from the wait, it would take 12 s


def test_always_pulls_and_records_the_repo_digest(
    docker_runtime: PodmanRuntime, image_registry: ImageRegistry, docker_client: docker.DockerClient
) -> None:
    # As the Docker test, but Podman's pull stream has no "Digest:" line to show.
    pushed = image_registry.push("pull/always", tag="1.0")
    name = f"{image_registry.address}/pull/always:1.0"
    image = docker_runtime.ensure_image(name, policy="always")
    assert image.repo_digest == pushed
    assert image.image_id.removeprefix("sha256:") in docker_client.images.get(name).id


# ---- Podman's own ------------------------------------------------------------------------------


def test_ping_names_podmans_version(docker_runtime: PodmanRuntime) -> None:
    assert docker_runtime.ping().split(".")[0].isdigit()


def test_a_docker_engine_is_not_taken_for_podman(
    podman_engine: PodmanEngine, docker_runtime: PodmanRuntime
) -> None:
    docker_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    with pytest.raises(ContainerError, match="not Podman"):
        PodmanRuntime(docker_host).ping()


def test_unreachable_socket_is_runtime_unavailable(tmp_path: Path) -> None:
    runtime = open_runtime("podman", podman_socket=f"unix://{tmp_path}/no-podman.sock")
    with pytest.raises(RuntimeUnavailable, match=r"no-podman\.sock"):
        runtime.ping()


def test_site_config_chooses_podman_and_its_socket(podman_engine: PodmanEngine) -> None:
    settings = RuntimeSettings(engine="podman", podman=PodmanSettings(podman_engine.socket))
    runtime = open_site_runtime(settings)
    assert isinstance(runtime, PodmanRuntime)
    assert runtime.host == podman_engine.socket
    assert runtime.ping()[:1].isdigit()


def test_default_socket_is_rootful_for_root_and_the_users_own_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    expected = "unix:///run/user/1000/podman/podman.sock"
    if os.geteuid() == 0:
        expected = "unix:///run/podman/podman.sock"
    assert default_socket() == expected


def test_exit_137_ptm_did_not_cause_is_an_oom_kill(
    docker_runtime: PodmanRuntime, spec: ContainerSpec
) -> None:
    # Podman on cgroup v1 never reports OOMKilled; a SIGKILL from inside (as the OOM killer
    # sends) must still read as one, and ptm's own kill must not.
    outcome = run_to_end(docker_runtime, shell(spec, "sh -c 'kill -9 $$'; exit $?"))
    assert (outcome.exit_code, outcome.oom_killed) == (137, True)
    ref = docker_runtime.start(
        shell(spec, "sleep 60"), docker_runtime.ensure_image(spec.image, policy="never")
    )
    docker_runtime.kill(ref)
    killed = docker_runtime.wait(ref, timeout_s=30)
    assert (killed.exit_code, killed.oom_killed) == (137, False)


# ---- rootless ----------------------------------------------------------------------------------


@pytest.fixture
def rootless_runtime(rootless_podman: PodmanEngine) -> Iterator[PodmanRuntime]:
    runtime = PodmanRuntime(rootless_podman.socket, labels={RUN_LABEL: RUN_ID})
    yield runtime
    runtime.close()


def test_rootless_podman_runs_only_where_its_limits_hold(
    rootless_runtime: PodmanRuntime, spec: ContainerSpec, tmp_path: Path
) -> None:
    """Rootless Podman on cgroup v1 silently drops memory, CPU and pids limits, so ptm refuses
    it; on cgroup v2 (with delegated controllers) the sandbox's limits hold from inside."""
    tmp_path.chmod(0o755)  # the rootless user's containers read the task's files
    if not limits_hold(rootless_runtime.info()):
        with pytest.raises(RuntimeUnavailable, match="cgroup v1"):
            rootless_runtime.ping()
        image = rootless_runtime.ensure_image(spec.image, policy="never")
        with pytest.raises(RuntimeUnavailable, match="cgroup v1"):
            rootless_runtime.start(shell(spec, "true"), image)
        assert rootless_runtime.find_containers(SITE) == []
        return
    limited = shell(spec, "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; id -u")
    outcome = run_to_end(rootless_runtime, replace(limited, memory_bytes=48 * 1024**2, pids=32))
    assert outcome.log.decode().split() == [str(48 * 1024**2), "32", "65534"]


@pytest.mark.parametrize(
    ("version", "rootless", "controllers", "holds"),
    [
        ("v1", False, [], True),
        ("v1", True, ["memory", "cpu", "pids"], False),
        ("v2", True, ["cpuset", "cpu", "io", "memory", "pids"], True),
        ("v2", True, ["memory", "pids"], False),  # no cpu delegated: --cpus would be ignored
        ("v2", False, ["cpu", "memory"], False),
    ],
)
def test_limits_hold_only_with_every_limit_controller(
    version: str, rootless: bool, controllers: list[str], holds: bool
) -> None:
    info = {
        "host": {
            "cgroupVersion": version,
            "security": {"rootless": rootless},
            "cgroupControllers": controllers,
        }
    }
    assert limits_hold(info) is holds
