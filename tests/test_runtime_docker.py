"""DockerRuntime against a real engine: runs, limits, pulls, re-attaching, and the sandbox
proven from inside real containers."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from ptm.errors import ContainerError, RuntimeUnavailable
from ptm.runtimes import open_runtime
from ptm.runtimes.base import TRUNCATION_MARKER, ContainerSpec, LogCap, Mount, Outcome
from ptm.runtimes.docker import DockerRuntime, seconds_since
from ptm.runtimes.images import PullReporter, matching_repo_digest, split_reference
from ptm.runtimes.sandbox import numeric_user
from tests.fixtures_docker import RUN_ID, RUN_LABEL, ImageRegistry

SITE = f"test-site-{RUN_ID}"


@pytest.fixture
def spec(tmp_path: Path, test_image: str) -> ContainerSpec:
    config = tmp_path / "config.yaml"
    config.write_text("column: age\n")
    inputs = tmp_path / "input"
    inputs.mkdir()
    (inputs / "cohort.csv").write_text("age\n41\n")
    output = tmp_path / "output"
    output.mkdir()
    return ContainerSpec(
        task_id="age-stats",
        site=SITE,
        image=test_image,
        command=("true",),
        environment={},
        config_file=config,
        input_dir=inputs,
        output_dir=output,
        memory_bytes=64 * 1024**2,
        cpus=0.5,
        pids=64,
    )


def shell(spec: ContainerSpec, script: str, **changes: object) -> ContainerSpec:
    return replace(spec, command=("sh", "-c", script), **changes)  # type: ignore[arg-type]


def run_to_end(runtime: DockerRuntime, spec: ContainerSpec, *, timeout_s: float = 60) -> Outcome:
    image = runtime.ensure_image(spec.image, policy="never")
    ref = runtime.start(spec, image)
    return runtime.wait(ref, timeout_s=timeout_s)


def text(outcome: Outcome) -> str:
    return outcome.log.decode()


# ---- running ---------------------------------------------------------------------------------


def test_container_sees_the_contract_and_its_output_lands_on_the_host(
    docker_runtime: DockerRuntime, spec: ContainerSpec
) -> None:
    script = (
        'echo "$PTM_TASK_ID $PTM_SITE $PTM_CONFIG $PTM_OUTPUT"; cat "$PTM_CONFIG"; '
        "cat /ptm/input/cohort.csv | wc -l; echo 41 > $PTM_OUTPUT/mean.txt"
    )
    outcome = run_to_end(docker_runtime, shell(spec, script))
    assert outcome == Outcome(exit_code=0, log=outcome.log)
    assert text(outcome).splitlines() == [
        f"age-stats {SITE} /ptm/config/config.yaml /ptm/output",
        "column: age",
        "2",
    ]
    assert (spec.output_dir / "mean.txt").read_text() == "41\n"


def test_site_variables_are_passed_but_ptm_ones_cannot_be_overridden(
    docker_runtime: DockerRuntime, spec: ContainerSpec
) -> None:
    environment = {"SPARQL_ENDPOINT": "http://sparql.internal/q", "PTM_SITE": "elsewhere"}
    outcome = run_to_end(
        docker_runtime, shell(spec, 'echo "$SPARQL_ENDPOINT $PTM_SITE"', environment=environment)
    )
    assert text(outcome) == f"http://sparql.internal/q {SITE}\n"


def test_stdout_and_stderr_both_reach_the_log(
    docker_runtime: DockerRuntime, spec: ContainerSpec
) -> None:
    outcome = run_to_end(docker_runtime, shell(spec, "echo out; echo err >&2"))
    assert sorted(text(outcome).splitlines()) == ["err", "out"]


def test_nonzero_exit_code_is_reported(docker_runtime: DockerRuntime, spec: ContainerSpec) -> None:
    outcome = run_to_end(docker_runtime, shell(spec, "echo failing; exit 3"))
    assert (outcome.exit_code, outcome.timed_out, outcome.cancelled) == (3, False, False)
    assert text(outcome) == "failing\n"


def test_image_default_command_runs_when_task_gives_none(
    docker_runtime: DockerRuntime, spec: ContainerSpec
) -> None:
    # The test image's own command is `sh`, which reads an empty stdin and exits 0.
    outcome = run_to_end(docker_runtime, replace(spec, command=None))
    assert outcome.exit_code == 0


def test_time_limit_kills_the_container(docker_runtime: DockerRuntime, spec: ContainerSpec) -> None:
    began = time.monotonic()
    outcome = run_to_end(docker_runtime, shell(spec, "echo started; sleep 60"), timeout_s=1)
    assert outcome.timed_out and not outcome.cancelled
    assert outcome.exit_code is None
    assert time.monotonic() - began < 10
    assert text(outcome) == "started\n"


def test_cancel_kills_the_container(docker_runtime: DockerRuntime, spec: ContainerSpec) -> None:
    ref = docker_runtime.start(
        shell(spec, "sleep 60"), docker_runtime.ensure_image(spec.image, policy="never")
    )
    asked = threading.Event()
    threading.Timer(0.5, asked.set).start()
    began = time.monotonic()
    outcome = docker_runtime.wait(ref, timeout_s=60, cancelled=asked.is_set)
    assert outcome.cancelled and not outcome.timed_out
    assert outcome.exit_code is None
    assert time.monotonic() - began < 10
    assert docker_runtime.find_running(SITE) == []


def test_long_log_keeps_its_end_behind_a_marker(
    docker_runtime: DockerRuntime, spec: ContainerSpec
) -> None:
    script = "seq 1 20000; echo the-end"  # about 110 kB
    outcome = run_to_end(docker_runtime, shell(spec, script, log_bytes=4096))
    first, _, rest = outcome.log.partition(b"\n")
    assert first.startswith(TRUNCATION_MARKER)
    assert len(rest) == 4096
    assert rest.endswith(b"19999\n20000\nthe-end\n")


def test_memory_hog_is_oom_killed(docker_runtime: DockerRuntime, spec: ContainerSpec) -> None:
    # dd allocates its block in memory: 256 MiB against a 32 MiB limit (swap included).
    hog = shell(spec, "dd if=/dev/zero of=/dev/null bs=256M count=1", memory_bytes=32 * 1024**2)
    outcome = run_to_end(docker_runtime, hog)
    assert outcome.oom_killed
    assert outcome.exit_code == 137


def test_site_data_is_mounted_read_only(
    docker_runtime: DockerRuntime, spec: ContainerSpec, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "patients.csv").write_text("id\n1\n")
    mounted = replace(spec, data_mounts=(Mount(data, "/data"),))
    script = "cat /data/patients.csv; touch /data/x 2>/dev/null || echo refused"
    outcome = run_to_end(docker_runtime, shell(mounted, script))
    assert text(outcome).splitlines()[:2] == ["id", "1"]
    assert text(outcome).splitlines()[-1] == "refused"
    assert sorted(p.name for p in data.iterdir()) == ["patients.csv"]


@pytest.mark.parametrize("target", ["/ptm/output/x", "/tmp", "/proc/x", "relative", "/a/../b", "/"])
def test_mount_over_the_sandbox_is_refused(
    docker_runtime: DockerRuntime, spec: ContainerSpec, tmp_path: Path, target: str
) -> None:
    with pytest.raises(ContainerError, match="mount target"):
        docker_runtime.start(
            replace(spec, data_mounts=(Mount(tmp_path, target),)),
            docker_runtime.ensure_image(spec.image, policy="never"),
        )
    assert docker_runtime.find_containers(SITE) == []


@pytest.mark.parametrize("network", ["host", "container:abc", ""])
def test_host_or_shared_network_is_refused(
    docker_runtime: DockerRuntime, spec: ContainerSpec, network: str
) -> None:
    with pytest.raises(ContainerError, match="not allowed"):
        docker_runtime.start(
            replace(spec, network=network), docker_runtime.ensure_image(spec.image, policy="never")
        )


def test_unknown_network_is_a_container_error(
    docker_runtime: DockerRuntime, spec: ContainerSpec
) -> None:
    with pytest.raises(ContainerError, match="no-such-network"):
        docker_runtime.start(
            replace(spec, network=f"no-such-network-{RUN_ID}"),
            docker_runtime.ensure_image(spec.image, policy="never"),
        )
    assert docker_runtime.find_containers(SITE) == []


# ---- re-attaching, kill, remove ----------------------------------------------------------------


@pytest.fixture
def second_runtime(docker_client: docker.DockerClient) -> Iterator[DockerRuntime]:
    """Another runtime on the same engine: the agent after a restart."""
    runtime = DockerRuntime(None, labels={RUN_LABEL: RUN_ID})
    yield runtime
    runtime.close()


def test_restarted_agent_finds_and_reattaches_to_a_running_container(
    docker_runtime: DockerRuntime, second_runtime: DockerRuntime, spec: ContainerSpec
) -> None:
    ref = docker_runtime.start(
        shell(spec, "sleep 1; echo done"), docker_runtime.ensure_image(spec.image, policy="never")
    )
    docker_runtime.close()
    assert second_runtime.find_running(SITE) == [ref]
    outcome = second_runtime.wait(ref, timeout_s=30)
    assert (outcome.exit_code, text(outcome)) == (0, "done\n")
    assert second_runtime.find_running(SITE) == []
    assert second_runtime.find_containers(SITE) == [ref]


def test_time_limit_counts_from_the_containers_start_after_a_restart(
    docker_runtime: DockerRuntime, second_runtime: DockerRuntime, spec: ContainerSpec
) -> None:
    ref = docker_runtime.start(
        shell(spec, "sleep 60"), docker_runtime.ensure_image(spec.image, policy="never")
    )
    time.sleep(2)
    began = time.monotonic()
    outcome = second_runtime.wait(ref, timeout_s=2)
    assert outcome.timed_out
    assert time.monotonic() - began < 1.5


def test_other_sites_containers_are_not_found(
    docker_runtime: DockerRuntime, spec: ContainerSpec
) -> None:
    image = docker_runtime.ensure_image(spec.image, policy="never")
    ref = docker_runtime.start(replace(spec, site=f"other-{RUN_ID}", command=("sleep", "5")), image)
    assert docker_runtime.find_containers(SITE) == []
    assert docker_runtime.find_running(f"other-{RUN_ID}") == [ref]


def test_kill_and_remove_are_idempotent(docker_runtime: DockerRuntime, spec: ContainerSpec) -> None:
    ref = docker_runtime.start(
        shell(spec, "sleep 60"), docker_runtime.ensure_image(spec.image, policy="never")
    )
    docker_runtime.kill(ref)
    docker_runtime.kill(ref)
    outcome = docker_runtime.wait(ref, timeout_s=30)
    assert outcome.exit_code == 137
    docker_runtime.remove(ref)
    docker_runtime.remove(ref)
    assert docker_runtime.find_containers(SITE) == []
    with pytest.raises(ContainerError, match="is gone"):
        docker_runtime.wait(ref, timeout_s=1)


# ---- the engine --------------------------------------------------------------------------------


def test_ping_names_the_engine_version(docker_runtime: DockerRuntime) -> None:
    assert docker_runtime.ping()[:1].isdigit()


def test_unreachable_engine_is_runtime_unavailable(tmp_path: Path) -> None:
    runtime = open_runtime("docker", docker_host=f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(RuntimeUnavailable, match=r"no-engine\.sock"):
        runtime.ping()
    with pytest.raises(RuntimeUnavailable):
        runtime.find_containers(SITE)


# ---- images ------------------------------------------------------------------------------------


def test_never_with_a_missing_image_names_it(docker_runtime: DockerRuntime) -> None:
    missing = f"ptm-test/absent-{RUN_ID}:1.0"
    with pytest.raises(ContainerError, match=f"{missing}.*never"):
        docker_runtime.ensure_image(missing, policy="never")


def test_local_image_without_registry_has_an_id_but_no_digest(
    docker_runtime: DockerRuntime, docker_client: docker.DockerClient, test_image: str
) -> None:
    lines: list[str] = []
    image = docker_runtime.ensure_image(test_image, policy="if-missing", progress=lines.append)
    assert image.image_id == docker_client.images.get(test_image).id
    assert image.repo_digest is None
    assert lines == []


def test_always_pulls_and_records_the_repo_digest(
    docker_runtime: DockerRuntime, image_registry: ImageRegistry, docker_client: docker.DockerClient
) -> None:
    pushed = image_registry.push("pull/always", tag="1.0")
    lines: list[str] = []
    name = f"{image_registry.address}/pull/always:1.0"
    image = docker_runtime.ensure_image(name, policy="always", progress=lines.append)
    assert image.repo_digest == pushed
    assert image.image_id == docker_client.images.get(name).id
    assert any(line.startswith("Digest: sha256:") for line in lines)


def changed_image(client: docker.DockerClient, test_image: str, marker: str) -> str:
    """A different image than the test image (one more file), made by committing a container."""
    container = client.containers.run(
        test_image, ["sh", "-c", f"echo {marker} > /marker"], detach=True,
        labels={RUN_LABEL: RUN_ID},
    )  # fmt: skip
    container.wait()
    repository = f"ptm-test/changed-{RUN_ID}"
    container.commit(repository, marker)
    return f"{repository}:{marker}"


def test_always_sees_a_moved_tag_but_if_missing_keeps_the_local_one(
    docker_runtime: DockerRuntime,
    image_registry: ImageRegistry,
    docker_client: docker.DockerClient,
    test_image: str,
) -> None:
    name = f"{image_registry.address}/pull/moving:stable"
    first = image_registry.push("pull/moving", tag="stable")
    assert docker_runtime.ensure_image(name, policy="if-missing").repo_digest == first
    second = image_registry.push(
        "pull/moving", tag="stable", source=changed_image(docker_client, test_image, "v2")
    )
    assert second != first
    # Pushing moved the engine's own tag too; put it back where the first pull had left it.
    docker_client.images.get(first).tag(f"{image_registry.address}/pull/moving", "stable")
    assert docker_runtime.ensure_image(name, policy="if-missing").repo_digest == first
    assert docker_runtime.ensure_image(name, policy="always").repo_digest == second


def test_digest_pinned_reference_resolves_to_exactly_that_digest(
    docker_runtime: DockerRuntime, image_registry: ImageRegistry, docker_client: docker.DockerClient
) -> None:
    pinned = image_registry.push("pull/pinned", tag="1.0")
    image = docker_runtime.ensure_image(pinned, policy="always")
    assert image.repo_digest == pinned
    assert docker_runtime.ensure_image(pinned, policy="never") == image


def test_pinned_digest_the_registry_lacks_is_an_error(
    docker_runtime: DockerRuntime, image_registry: ImageRegistry
) -> None:
    pinned = image_registry.push("pull/lacking", tag="1.0")
    wrong = pinned[: -len("0123")] + ("0000" if not pinned.endswith("0000") else "1111")
    with pytest.raises(ContainerError, match="pull/lacking"):
        docker_runtime.ensure_image(wrong, policy="always")


def test_unreachable_registry_is_a_container_error(docker_runtime: DockerRuntime) -> None:
    with pytest.raises(ContainerError, match=re.escape("127.0.0.1:9/nothing")):
        docker_runtime.ensure_image("127.0.0.1:9/nothing:1", policy="if-missing")


# ---- the sandbox, seen from inside -------------------------------------------------------------


def test_root_filesystem_and_contract_inputs_are_read_only(
    docker_runtime: DockerRuntime, spec: ContainerSpec
) -> None:
    script = (
        "for f in /x /bin/x /ptm/config/x /ptm/input/x /ptm/config/config.yaml; do "
        '  touch "$f" 2>/dev/null && echo "wrote $f" || echo "refused $f"; done; '
        "touch /ptm/output/x && echo 'wrote /ptm/output/x'"
    )
    outcome = run_to_end(docker_runtime, shell(spec, script))
    assert text(outcome).splitlines() == [
        "refused /x",
        "refused /bin/x",
        "refused /ptm/config/x",
        "refused /ptm/input/x",
        "refused /ptm/config/config.yaml",
        "wrote /ptm/output/x",
    ]


def test_runs_as_a_non_root_user(docker_runtime: DockerRuntime, spec: ContainerSpec) -> None:
    outcome = run_to_end(docker_runtime, shell(spec, "id -u; id -g"))
    assert text(outcome).split() == ["65534", "65534"]


def test_has_no_network_but_loopback(docker_runtime: DockerRuntime, spec: ContainerSpec) -> None:
    outcome = run_to_end(docker_runtime, shell(spec, "ls /sys/class/net"))
    assert text(outcome).split() == ["lo"]


def test_tmp_is_a_small_tmpfs(docker_runtime: DockerRuntime, spec: ContainerSpec) -> None:
    script = (
        "dd if=/dev/zero of=/tmp/small bs=1024 count=512 2>/dev/null && echo fits; "
        "dd if=/dev/zero of=/tmp/big bs=1024 count=2048 2>/dev/null || echo full"
    )
    outcome = run_to_end(docker_runtime, shell(spec, script, tmpfs_bytes=1024**2))
    assert text(outcome).split() == ["fits", "full"]


def test_all_capabilities_are_dropped(docker_runtime: DockerRuntime, spec: ContainerSpec) -> None:
    outcome = run_to_end(
        docker_runtime, shell(spec, "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status")
    )
    fields = dict(line.split(":\t") for line in text(outcome).splitlines())
    assert set(fields) == {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}
    assert set(fields.values()) == {"0000000000000000"}


def test_no_new_privileges(docker_runtime: DockerRuntime, spec: ContainerSpec) -> None:
    outcome = run_to_end(docker_runtime, shell(spec, "grep NoNewPrivs /proc/self/status"))
    assert text(outcome).split() == ["NoNewPrivs:", "1"]


def test_pids_limit_holds(docker_runtime: DockerRuntime, spec: ContainerSpec) -> None:
    script = "for i in $(seq 1 40); do sleep 5 & done 2>&1; echo looped"
    limited = run_to_end(docker_runtime, shell(spec, script, pids=8))
    assert "can't fork" in text(limited)
    roomy = run_to_end(docker_runtime, shell(spec, script, pids=64))
    assert text(roomy) == "looped\n"


def read_cgroup(docker_runtime: DockerRuntime, spec: ContainerSpec, *paths: str) -> str:
    script = "; ".join(f"cat {p} 2>/dev/null" for p in paths)
    return text(run_to_end(docker_runtime, shell(spec, script))).strip()


def test_memory_limit_is_set_swap_included(
    docker_runtime: DockerRuntime, spec: ContainerSpec
) -> None:
    limited = replace(spec, memory_bytes=48 * 1024**2)
    expected = str(48 * 1024**2)
    if Path("/sys/fs/cgroup/memory").is_dir():  # cgroup v1, as on this kind of machine
        files = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
        found = read_cgroup(docker_runtime, limited, *(f"/sys/fs/cgroup/memory/{f}" for f in files))
        assert found.split() == [expected, expected]
    else:
        found = read_cgroup(
            docker_runtime, limited, "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.swap.max"
        )
        assert found.split() == [expected, "0"]


def test_cpu_limit_is_set(docker_runtime: DockerRuntime, spec: ContainerSpec) -> None:
    found = read_cgroup(
        docker_runtime,
        replace(spec, cpus=0.5),
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us",
        "/sys/fs/cgroup/cpu.max",
    )
    quota, period = (int(n) for n in found.split())
    assert quota / period == 0.5


# ---- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("busybox", ("busybox", "latest", False)),
        ("org/stats:1.2", ("org/stats", "1.2", False)),
        ("127.0.0.1:5000/org/stats", ("127.0.0.1:5000/org/stats", "latest", False)),
        ("127.0.0.1:5000/org/stats:2", ("127.0.0.1:5000/org/stats", "2", False)),
        ("org/stats@sha256:ab12", ("org/stats", "sha256:ab12", True)),
        ("host:1/org/stats:1.2@sha256:ab12", ("host:1/org/stats", "sha256:ab12", True)),
    ],
)
def test_split_reference(image: str, parts: tuple[str, str, bool]) -> None:
    assert split_reference(image) == parts


def test_repo_digest_matches_docker_hub_spellings_and_the_digest() -> None:
    digests = ["busybox@sha256:aa", "127.0.0.1:5000/busybox@sha256:bb"]
    assert matching_repo_digest(digests, "docker.io/library/busybox", None) == digests[0]
    assert matching_repo_digest(digests, "127.0.0.1:5000/busybox", "sha256:bb") == digests[1]
    assert matching_repo_digest(digests, "127.0.0.1:5000/busybox", "sha256:aa") is None
    assert matching_repo_digest(digests, "other/busybox", None) is None


def test_pull_progress_is_throttled_per_layer_and_the_digest_remembered() -> None:
    now = [0.0]
    lines: list[str] = []
    reporter = PullReporter(lines.append, every_s=5, clock=lambda: now[0])
    for second, event in enumerate(
        [
            {"status": "Pulling from org/stats", "id": "1.0"},
            {"status": "Downloading", "id": "abc", "progress": "[=> ] 1MB/9MB"},
            {"status": "Downloading", "id": "abc", "progress": "[==> ] 2MB/9MB"},
            {"status": "Downloading", "id": "def", "progress": "[=> ] 1MB/5MB"},
            {"status": "Pull complete", "id": "abc"},
            {"status": "Downloading", "id": "def", "progress": "[====> ] 5MB/5MB"},
            {"status": "Digest: sha256:ff"},
        ]
    ):
        now[0] = float(second)
        reporter.report(event)
    assert lines == [
        "1.0: Pulling from org/stats",
        "abc: Downloading [=> ] 1MB/9MB",
        "def: Downloading [=> ] 1MB/5MB",
        "abc: Pull complete",
        "Digest: sha256:ff",
    ]
    assert reporter.digest == "sha256:ff"


def test_log_cap_keeps_the_tail_and_says_how_much_was_dropped() -> None:
    cap = LogCap(10)
    for chunk in (b"0123456789", b"abcdefghij", b"KLMNO"):
        cap.add(chunk)
    assert cap.value() == (
        b"[ptm] log truncated: 15 earlier bytes dropped, the last 10 follow\nfghijKLMNO"
    )
    short = LogCap(10)
    short.add(b"0123456789")
    assert short.value() == b"0123456789"


def test_seconds_since_reads_engine_timestamps() -> None:
    assert seconds_since("0001-01-01T00:00:00Z") == 0.0
    assert seconds_since("not a time") == 0.0
    minute_ago = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 60))
    assert 59 < seconds_since(f"{minute_ago}.123456789Z") < 62


@pytest.mark.parametrize(
    ("user", "owner"),
    [("65534:65534", (65534, 65534)), ("1000", (1000, -1)), ("nobody", None), ("1:x", None)],
)
def test_numeric_user(user: str, owner: tuple[int, int] | None) -> None:
    assert numeric_user(user) == owner
