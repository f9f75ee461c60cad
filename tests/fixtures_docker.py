"""Docker fixtures: a real engine, the test image and a real image registry (no mocks).

- ``docker_client``: a docker SDK client for the engine DOCKER_HOST (or the default socket)
  names. Start a private one with ``export "$(scripts/engine start)"``. Without an engine the
  tests that need one skip locally and *fail* when ``CI=true``.
- ``test_image``: ``ptm-test/busybox:latest`` (built by ``scripts/build-test-image`` if missing).
- ``image_registry``: Debian's ``docker-registry`` on a free loopback port; ``.push(name)``
  copies the test image there and returns its ``name@sha256:…`` repo digest.
- ``docker_runtime``: a ``DockerRuntime`` whose containers carry this test run's label.
- ``test_labels``: put these labels on containers you create; they are removed after each test.

Any test that uses one of these fixtures, or is marked ``@pytest.mark.docker``, is a docker test:
in CI it fails instead of skipping.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import docker
import docker.errors
import pytest
import requests

from ptm.process import run

if TYPE_CHECKING:
    from ptm.runtimes.docker import DockerRuntime

TEST_IMAGE = "ptm-test/busybox:latest"
REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_LABEL = "ptm.test-run"
RUN_ID = uuid.uuid4().hex[:12]
DOCKER_FIXTURES = frozenset(
    {"docker_client", "test_image", "image_registry", "docker_runtime", "test_labels"}
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip on a laptop that lacks a part (Docker, the image registry, a capability); fail in CI
    (CI=true), where a skipped test would prove nothing. Every skip in the suite goes here."""
    if in_ci():
        pytest.fail(f"CI must not skip a test: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DOCKER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and in_ci() and item.get_closest_marker("docker") is not None:
        report.outcome = "failed"
        report.longrepr = f"CI must not skip a test: {report.longrepr}"


@pytest.fixture(autouse=True)
def _docker_test_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Docker tests get an engine (or skip/fail) and leave no container of theirs behind."""
    if request.node.get_closest_marker("docker") is None:
        yield
        return
    client = request.getfixturevalue("docker_client")
    yield
    remove_test_containers(client)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        unavailable(f'no Docker engine reachable ({exc}); try: export "$(scripts/engine start)"')
    yield client
    remove_test_containers(client)
    client.close()


def remove_test_containers(client: docker.DockerClient) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


@pytest.fixture
def test_labels() -> dict[str, str]:
    return {RUN_LABEL: RUN_ID}


@pytest.fixture(scope="session")
def test_image(docker_client: docker.DockerClient) -> str:
    try:
        docker_client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        run([str(REPO_ROOT / "scripts" / "build-test-image")])
    return TEST_IMAGE


@pytest.fixture
def docker_runtime(docker_client: docker.DockerClient, test_image: str) -> Iterator[DockerRuntime]:
    from ptm.runtimes.docker import DockerRuntime

    runtime = DockerRuntime(None, labels={RUN_LABEL: RUN_ID})
    yield runtime
    runtime.close()


@dataclass(frozen=True)
class ImageRegistry:
    """A real registry on loopback (dockerd treats 127.0.0.0/8 registries as insecure)."""

    address: str
    client: docker.DockerClient

    def push(
        self, name: str, *, tag: str = "latest", source: str = TEST_IMAGE, keep_local: bool = False
    ) -> str:
        """Push image ``source`` as ``ADDRESS/name:tag``; return ``ADDRESS/name@sha256:…``.

        Unless ``keep_local``, the engine forgets the pushed names again, so that using them
        means a real pull.
        """
        repository = f"{self.address}/{name}"
        self.client.images.get(source).tag(repository, tag)
        digest = ""
        for line in self.client.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in line:
                raise RuntimeError(f"push of {repository}:{tag} failed: {line['error']}")
            digest = line.get("aux", {}).get("Digest", digest)
        if not digest:
            raise RuntimeError(f"push of {repository}:{tag} reported no digest")
        if not keep_local:
            self.forget(f"{repository}:{tag}", f"{repository}@{digest}")
        return f"{repository}@{digest}"

    def forget(self, *references: str) -> None:
        for reference in references:
            with contextlib.suppress(docker.errors.ImageNotFound):
                self.client.images.remove(reference)


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def registry_answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def image_registry(
    docker_client: docker.DockerClient, test_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ImageRegistry]:
    address = f"127.0.0.1:{free_loopback_port()}"
    with registry_server(tmp_path_factory.mktemp("image-registry"), address):
        yield ImageRegistry(address, docker_client)


@contextlib.contextmanager
def registry_server(folder: Path, address: str) -> Iterator[None]:
    """Debian's docker-registry serving ``address`` from ``folder`` until the block ends."""
    binary = Path("/usr/bin/docker-registry")
    if not binary.exists():
        unavailable("docker-registry is not installed (scripts/engine packages installs it)")
    config = folder / "config.yml"
    settings = {
        "version": "0.1",
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(folder / "storage")}},
        "http": {"addr": address},
    }
    config.write_text(json.dumps(settings))  # JSON is YAML
    with (folder / "registry.log").open("wb") as log:
        server = subprocess.Popen([str(binary), "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while not registry_answers(address):
            if server.poll() is not None or time.monotonic() > deadline:
                output = (folder / "registry.log").read_text(errors="replace")
                pytest.fail(f"docker-registry did not start on {address}:\n{output}")
            time.sleep(0.05)
        yield
    finally:
        server.terminate()
        server.wait(timeout=10)
