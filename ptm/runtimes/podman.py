"""The Podman backend: Podman's Docker-compatible API (``podman system service``), driven by
the Docker backend, with the two places where Podman answers differently.

Why the API and not the CLI: the same request builds the same sandbox (one code path, proven
by one set of tests against both engines), waiting is polling an inspect rather than parsing a
CLI's output, and the socket works the same for a rootful service (``/run/podman/podman.sock``)
and a rootless one (``$XDG_RUNTIME_DIR/podman/podman.sock``). Where Podman differs:

- it does not always report ``OOMKilled`` (with cgroup v1 and the cgroupfs manager it never
  does), so an exit of 137 (SIGKILL) that ptm did not cause is taken as the kernel's OOM kill:
  every container runs under a memory limit, and nothing else in the sandbox sends SIGKILL;
- rootless Podman on cgroup v1 (or on v2 without delegated controllers) ignores memory, CPU
  and pids limits with a mere warning, so ptm asks the service first and refuses to run there;
- killing a container that has already ended is a server error (500), not a 409; the kill
  inside ``DockerRuntime.wait`` must tolerate that too, hence the small ``PodmanCompatEngine``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ptm.errors import ContainerError, RuntimeUnavailable
from ptm.runtimes.base import ContainerRef, ContainerSpec, ImageRef, Outcome, Progress, PullPolicy
from ptm.runtimes.docker import ENDED, DockerRuntime, engine_errors

ROOTFUL_SOCKET = "unix:///run/podman/podman.sock"
SIGKILL_EXIT = 137
LIMIT_CONTROLLERS = frozenset({"memory", "cpu", "pids"})


def default_socket() -> str:
    """Where ``podman system service`` listens by default for the user running ptm."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if os.geteuid() != 0 and runtime_dir:
        return f"unix://{runtime_dir}/podman/podman.sock"
    return ROOTFUL_SOCKET


def limits_hold(info: Mapping[str, Any]) -> bool:
    """Whether containers of the service whose ``/libpod/info`` this is get their limits."""
    host = info["host"]
    if str(host.get("cgroupVersion")) == "v1":
        return not host["security"]["rootless"]
    return set(host.get("cgroupControllers") or ()) >= LIMIT_CONTROLLERS


def limits_problem(info: Mapping[str, Any]) -> str:
    host = info["host"]
    if str(host.get("cgroupVersion")) == "v1":
        return "rootless Podman on cgroup v1 cannot limit memory, CPU or pids"
    missing = sorted(LIMIT_CONTROLLERS - set(host.get("cgroupControllers") or ()))
    return f"the cgroup controllers {', '.join(missing)} are not delegated to this Podman"


class PodmanCompatEngine(DockerRuntime):
    """The Docker backend on Podman's socket; only killing an ended container differs."""

    def kill(self, ref: ContainerRef) -> None:
        try:
            super().kill(ref)
        except ContainerError:
            if self.state(ref) not in {*ENDED, "gone"}:
                raise

    def state(self, ref: ContainerRef) -> str:
        """The container's status (``running``, ``exited``, …); ``gone`` once removed."""
        with engine_errors(f"inspecting the container of task {ref.task_id}", self.host):
            found = self.client.api.containers(all=True, filters={"id": ref.container_id})
        return str(found[0]["State"]) if found else "gone"


class PodmanRuntime:
    """``Runtime`` on a Podman API socket (``socket``, or the user's default one).

    ``labels`` work as in ``DockerRuntime``. Kills ptm asks for are remembered so that their
    exit 137 is not taken for an out-of-memory kill.
    """

    def __init__(self, socket: str | None = None, *, labels: Mapping[str, str] | None = None):
        self.host = socket or default_socket()
        self._engine = PodmanCompatEngine(self.host, labels=labels)
        self._killed: set[str] = set()
        self._limits_checked = False

    def close(self) -> None:
        self._engine.close()

    def ping(self) -> str:
        with engine_errors("asking the engine's version", self.host):
            version = self._engine.client.version()
        names = [str(part.get("Name", "")) for part in version.get("Components") or []]
        if not any("podman" in name.lower() for name in names):
            raise ContainerError(
                f"{self.host} answers, but it is not Podman (components: {', '.join(names)}); "
                "runtime.engine is podman"
            )
        self._check_limits()
        return str(version["Version"])

    def info(self) -> dict[str, Any]:
        """The service's own ``/libpod/info`` (host, cgroups, rootless, storage)."""
        api = self._engine.client.api
        with engine_errors("asking the engine's info", self.host):
            response = api.get(f"{api.base_url}/v4.0.0/libpod/info")
            response.raise_for_status()
            info: dict[str, Any] = response.json()
        return info

    def _check_limits(self) -> None:
        if self._limits_checked:
            return
        info = self.info()
        if not limits_hold(info):
            raise RuntimeUnavailable(
                f"Podman at {self.host}: {limits_problem(info)}, so ptm will not run tasks "
                "there; run Podman rootful, or rootless on cgroup v2 with delegation"
            )
        self._limits_checked = True

    def ensure_image(
        self, image: str, *, policy: PullPolicy, progress: Progress | None = None
    ) -> ImageRef:
        return self._engine.ensure_image(image, policy=policy, progress=progress)

    def start(self, spec: ContainerSpec, image: ImageRef) -> ContainerRef:
        self._check_limits()
        return self._engine.start(spec, image)

    def wait(
        self,
        ref: ContainerRef,
        *,
        timeout_s: float,
        cancelled: Callable[[], bool] | None = None,
    ) -> Outcome:
        outcome = self._engine.wait(ref, timeout_s=timeout_s, cancelled=cancelled)
        if outcome.exit_code == SIGKILL_EXIT and ref.container_id not in self._killed:
            return replace(outcome, oom_killed=True)
        return outcome

    def find_containers(self, site: str) -> list[ContainerRef]:
        return self._engine.find_containers(site)

    def find_running(self, site: str) -> list[ContainerRef]:
        return self._engine.find_running(site)

    def kill(self, ref: ContainerRef) -> None:
        self._killed.add(ref.container_id)
        self._engine.kill(ref)

    def remove(self, ref: ContainerRef) -> None:
        self._engine.remove(ref)
