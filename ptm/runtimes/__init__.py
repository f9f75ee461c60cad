"""Container runtimes: the ``Runtime`` protocol (``base``) and one module per backend.

Backends are imported only when asked for, so that nothing above this package imports a
container library.
"""

from __future__ import annotations

from typing import Literal

from ptm.runtimes.base import Runtime

RuntimeName = Literal["docker"]


def open_runtime(name: RuntimeName = "docker", *, docker_host: str | None = None) -> Runtime:
    """The backend called ``name``; it contacts its engine at first use."""
    if name == "docker":
        from ptm.runtimes.docker import DockerRuntime

        return DockerRuntime(docker_host)
    raise ValueError(f"unknown container runtime {name!r}")
