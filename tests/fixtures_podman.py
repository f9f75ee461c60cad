"""Podman fixtures: a private ``podman system service`` (rootful, and rootless when the machine
allows it), the test image imported into it, and a registry it may pull from over HTTP.

- ``podman_engine``: the rootful service on a socket in a temporary folder, with its own
  ``--root``/``--runroot``/``--tmpdir`` storage and its own containers.conf and registries.conf
  (passed in its environment only), so it never touches the machine's Podman state. Stopped by
  its own pid at the end of the session. Needs ``podman`` (``scripts/peers-podman`` installs it).
- ``rootless_podman``: the same, run as the unprivileged user ``scripts/peers-podman`` creates.

Without Podman these fixtures skip locally and fail in CI (``fixtures_docker.unavailable``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest
import requests

from ptm.process import run
from tests.fixtures_docker import (
    REPO_ROOT,
    RUN_ID,
    RUN_LABEL,
    TEST_IMAGE,
    ImageRegistry,
    free_loopback_port,
    unavailable,
)

ROOTLESS_USER = "ptm-rootless"
IMPORT_CHANGES = ("ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin", 'CMD ["sh"]')


@dataclass(frozen=True)
class PodmanEngine:
    """A running private Podman service: its socket, storage and the registry it trusts."""

    socket: str  # unix://…
    folder: Path
    registry_address: str  # 127.0.0.1:PORT, allowed over plain HTTP
    user: str | None  # None: root

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.socket, version="auto")

    def cli(self, *args: str) -> list[str]:
        """A podman command line on this service's storage (as its user)."""
        command = [
            "podman", "--root", str(self.folder / "root"), "--runroot", str(self.folder / "run"),
            "--tmpdir", str(self.folder / "tmp"), *args,
        ]  # fmt: skip
        if self.user is None:
            return command
        return ["runuser", "-u", self.user, "--", "env", *self._user_env(), *command]

    def environment(self) -> dict[str, str]:
        return {
            "CONTAINERS_CONF": str(self.folder / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.folder / "registries.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.folder / "storage.conf"),
        }

    def _user_env(self) -> list[str]:
        runtime_dir = self.folder / "xdg"
        variables = {**self.environment(), "HOME": str(self.folder), "XDG_RUNTIME_DIR": runtime_dir}
        return [f"{key}={value}" for key, value in variables.items()]


@dataclass(frozen=True)
class PodmanImageRegistry(ImageRegistry):
    """``ImageRegistry`` for Podman. Its pushes go through the podman CLI (the compatible API
    does not report the digest it pushed), each of the test image as an image of its own, which
    is then removed: Podman keeps every manifest digest an image ID was ever seen with, so a
    registry image must not share its ID with a local one for a pull to be a real pull."""

    engine: PodmanEngine | None = None

    def push(
        self, name: str, *, tag: str = "latest", source: str = TEST_IMAGE, keep_local: bool = False
    ) -> str:
        assert self.engine is not None
        repository = f"{self.address}/{name}"
        image = self._distinct(source, f"{name}:{tag}") if source == TEST_IMAGE else source
        self.client.images.get(image).tag(repository, tag)
        digest_file = self.engine.folder / "tmp" / "pushed.digest"
        command = ["push", "--quiet", "--digestfile", str(digest_file), f"{repository}:{tag}"]
        run(self.engine.cli(*command), env=self.engine.environment())
        if not keep_local:
            self.forget(f"{repository}:{tag}", image)
        return f"{repository}@{digest_file.read_text().strip()}"

    def _distinct(self, source: str, marker: str) -> str:
        container = self.client.containers.run(
            source, ["sh", "-c", f"echo {marker} > /marker"], detach=True,
            labels={RUN_LABEL: RUN_ID},
        )  # fmt: skip
        container.wait()
        image = container.commit()
        container.remove()
        return str(image.id)

    def forget(self, *references: str) -> None:
        for reference in references:  # Podman answers 404 or 500 for a name it lacks
            with contextlib.suppress(docker.errors.APIError):
                self.client.images.remove(reference, force=True)


def containers_conf() -> str:
    # A machine whose root lacks CAP_SYS_RESOURCE (like this kind of CI container) cannot give
    # containers Podman's default nofile/nproc limits (1048576); stay below the current ones.
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    return (
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'  # no systemd here
        'events_logger = "file"\n'
    )


def write_configs(folder: Path, registry_address: str) -> None:
    (folder / "containers.conf").write_text(containers_conf())
    (folder / "registries.conf").write_text(
        'unqualified-search-registries = []\nshort-name-mode = "disabled"\n'
        f'[[registry]]\nlocation = "{registry_address}"\ninsecure = true\n'
    )
    (folder / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{folder / "root"}"\n'
        f'runroot = "{folder / "run"}"\n'
    )


def rootless_user() -> str | None:
    try:
        pwd.getpwnam(ROOTLESS_USER)
    except KeyError:
        return None
    return ROOTLESS_USER


@contextlib.contextmanager
def podman_service(folder: Path, *, user: str | None) -> Iterator[PodmanEngine]:
    if shutil.which("podman") is None:
        unavailable("podman is not installed (scripts/peers-podman installs it)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("root", "run", "tmp", "xdg"):
        (folder / name).mkdir(exist_ok=True)
    (folder / "xdg").chmod(0o700)
    engine = PodmanEngine(
        f"unix://{folder}/podman.sock", folder, f"127.0.0.1:{free_loopback_port()}", user
    )
    write_configs(folder, engine.registry_address)
    if user is not None:
        run(["chown", "-R", user, str(folder)])
    log = (folder / "service.log").open("wb")
    service = subprocess.Popen(
        engine.cli("system", "service", "--time=0", engine.socket),
        env={**os.environ, **engine.environment()},
        cwd=folder,  # conmon leaves an "oom" marker file in its working folder
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        wait_for_service(engine, service)
        import_test_image(engine)
        yield engine
    finally:
        stop_service(engine, service)
        log.close()


def wait_for_service(engine: PodmanEngine, service: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not answers(engine):
        if service.poll() is not None or time.monotonic() > deadline:
            output = (engine.folder / "service.log").read_text(errors="replace")
            pytest.fail(f"podman system service did not start:\n{output}")
        time.sleep(0.1)


def answers(engine: PodmanEngine) -> bool:
    try:
        engine.client().close()
    except (docker.errors.DockerException, requests.RequestException):
        return False
    return True


def import_test_image(engine: PodmanEngine) -> None:
    tarball = engine.folder / "rootfs.tar"
    run([str(REPO_ROOT / "scripts" / "build-test-image"), "--rootfs-tar", str(tarball)])
    if engine.user is not None:
        run(["chown", engine.user, str(tarball)])
    changes = [part for change in IMPORT_CHANGES for part in ("--change", change)]
    command = engine.cli("import", "--quiet", *changes, str(tarball), TEST_IMAGE)
    run(command, env=engine.environment())


def stop_service(engine: PodmanEngine, service: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(subprocess.CalledProcessError, OSError):
        subprocess.run(
            engine.cli("rm", "--all", "--force", "--time", "0"),
            env={**os.environ, **engine.environment()},
            capture_output=True,
            timeout=60,
        )
    service.terminate()
    try:
        service.wait(timeout=15)
    except subprocess.TimeoutExpired:
        service.kill()
        service.wait(timeout=15)


@pytest.fixture(scope="session")
def podman_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanEngine]:
    with podman_service(tmp_path_factory.mktemp("podman"), user=None) as engine:
        yield engine


@pytest.fixture(scope="session")
def rootless_podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanEngine]:
    user = rootless_user()
    if user is None:
        unavailable(f"no user {ROOTLESS_USER} for rootless Podman (scripts/peers-podman makes it)")
    # The rootless user must be able to reach its folder: not under root's private tmp dirs.
    folder = Path(f"/tmp/ptm-rootless-{os.getpid()}")
    try:
        with podman_service(folder, user=user) as engine:
            yield engine
    finally:
        shutil.rmtree(folder, ignore_errors=True)
