"""The test infrastructure itself: a real engine, the test image and the image registry."""

from __future__ import annotations

import docker
import docker.errors
import pytest

from tests.fixtures_docker import ImageRegistry


def test_container_runs_and_its_output_is_read(
    docker_client: docker.DockerClient, test_image: str, test_labels: dict[str, str]
) -> None:
    output = docker_client.containers.run(
        test_image,
        ["sh", "-c", "echo hello from $(id -un); grep -c nobody /etc/passwd"],
        labels=test_labels,
        remove=True,
        network_mode="none",
    )
    assert output == b"hello from root\n1\n"


def test_test_image_has_the_applets_tests_rely_on(
    docker_client: docker.DockerClient, test_image: str, test_labels: dict[str, str]
) -> None:
    applets = "sh cat id ls ip sleep awk sed wc ln mkfifo mknod dd head seq"
    output = docker_client.containers.run(
        test_image,
        ["sh", "-c", f"for a in {applets}; do [ -x /bin/$a ] && echo $a; done"],
        labels=test_labels,
        remove=True,
        network_mode="none",
    )
    assert output.decode().split() == applets.split()


def test_labelled_containers_are_removed_after_each_test(
    docker_client: docker.DockerClient, test_image: str, test_labels: dict[str, str]
) -> None:
    container = docker_client.containers.create(test_image, ["true"], labels=test_labels)
    label, value = next(iter(test_labels.items()))
    found = docker_client.containers.list(all=True, filters={"label": f"{label}={value}"})
    assert container.id in [c.id for c in found]


def test_previous_tests_container_is_gone(
    docker_client: docker.DockerClient, test_labels: dict[str, str]
) -> None:
    label, value = next(iter(test_labels.items()))
    assert docker_client.containers.list(all=True, filters={"label": f"{label}={value}"}) == []


def test_registry_push_returns_a_digest_a_pull_resolves(
    docker_client: docker.DockerClient, image_registry: ImageRegistry
) -> None:
    reference = image_registry.push("infra/pushed")
    assert reference.startswith(f"{image_registry.address}/infra/pushed@sha256:")
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(reference)
    pulled = docker_client.images.pull(reference)
    assert reference in pulled.attrs["RepoDigests"]
