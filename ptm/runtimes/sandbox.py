"""Rules no site config or task can relax: which networks and mount targets a container gets."""

from __future__ import annotations

import posixpath

from ptm.errors import ContainerError
from ptm.runtimes.base import ContainerSpec

# Paths the sandbox itself provides; a site data mount must not hide or replace them.
RESERVED_TARGETS = ("/ptm", "/proc", "/sys", "/dev", "/tmp")


def check_network(network: str) -> None:
    """``none`` or a named network the site controls; never the host's or another container's."""
    if not network or network == "host" or network.startswith("container:"):
        raise ContainerError(
            f"network {network!r} is not allowed: containers get 'none' or a network the site "
            "controls, never the host's or another container's"
        )


def check_mount_target(target: str) -> None:
    """An absolute, normalised path outside the folders the sandbox provides."""
    if not target.startswith("/") or posixpath.normpath(target) != target or target == "/":
        raise ContainerError(
            f"mount target {target!r} must be an absolute, normalised path other than /"
        )
    for reserved in RESERVED_TARGETS:
        if target == reserved or target.startswith(reserved + "/"):
            raise ContainerError(f"mount target {target!r} would cover {reserved}")


def numeric_user(user: str) -> tuple[int, int] | None:
    """``uid[:gid]`` as numbers (gid -1: unchanged), or None for a user name."""
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        return None
    return int(uid), int(gid) if gid else -1


def check_limits(spec: ContainerSpec) -> None:
    """Every limit reaches the engine as a real limit: 0 means "none" to Docker and Podman."""
    if int(spec.cpus * 1e9) < 10**7 or spec.memory_bytes < 6 * 1024**2 or spec.pids < 1:
        raise ContainerError(
            f"task {spec.task_id}: cpus {spec.cpus:g}, memory {spec.memory_bytes} bytes and "
            f"pids {spec.pids} must be at least 0.01, 6 MiB and 1: anything less would reach the "
            "engine as no limit at all"
        )
