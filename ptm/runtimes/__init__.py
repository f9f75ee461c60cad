"""Container runtimes: the ``Runtime`` protocol (``base``) and one module per backend.

Backends are imported only when asked for, so that nothing above this package imports a
container library (and a Slurm site needs no Docker SDK connection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ptm.runtimes.base import Runtime

if TYPE_CHECKING:
    from ptm.siteconfig import RuntimeSettings, SlurmSettings

RuntimeName = Literal["docker", "podman", "slurm"]


def open_runtime(
    name: RuntimeName = "docker",
    *,
    docker_host: str | None = None,
    podman_socket: str | None = None,
    slurm: SlurmSettings | None = None,
) -> Runtime:
    """The backend called ``name``; it contacts its engine at first use."""
    if name == "docker":
        from ptm.runtimes.docker import DockerRuntime

        return DockerRuntime(docker_host)
    if name == "podman":
        from ptm.runtimes.podman import PodmanRuntime

        return PodmanRuntime(podman_socket)
    if name == "slurm":
        from ptm.runtimes.slurm import SlurmRuntime
        from ptm.siteconfig import SlurmSettings

        return SlurmRuntime(slurm if slurm is not None else SlurmSettings())
    raise ValueError(f"unknown container runtime {name!r}")


def open_site_runtime(settings: RuntimeSettings) -> Runtime:
    """The backend a site's ``runtime`` section chooses (``runtime.engine``)."""
    return open_runtime(
        settings.engine,
        docker_host=settings.docker_host,
        podman_socket=settings.podman.socket,
        slurm=settings.slurm,
    )
