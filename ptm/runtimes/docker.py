"""The Docker backend: the only module that imports ``docker`` (the SDK).

Every container gets the same sandbox, whatever its task says: read-only root filesystem, a
size-limited ``/tmp`` tmpfs, all capabilities dropped, no new privileges, a non-root user (the
site's ``runtime.user``), memory (swap included), CPU and pids limits, no network unless the
site names one of its own, and only the contract's mounts. ``docker.errors.*`` and ``requests``
exceptions become ``RuntimeUnavailable`` or ``ContainerError`` here.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests
import urllib3.exceptions

from ptm.errors import ContainerError, RuntimeUnavailable
from ptm.runtimes.base import (
    CONFIG_PATH,
    DEFAULT_LOG_BYTES,
    INPUT_PATH,
    LABEL_IMAGE,
    LABEL_LOG_BYTES,
    LABEL_MANAGED,
    LABEL_SITE,
    LABEL_TASK,
    OUTPUT_PATH,
    ContainerRef,
    ContainerSpec,
    ImageRef,
    LogCap,
    Outcome,
    Progress,
    PullPolicy,
)
from ptm.runtimes.images import PullReporter, matching_repo_digest, split_reference
from ptm.runtimes.sandbox import check_limits, check_mount_target, check_network, numeric_user

FIRST_WAIT_SLICE_S = 0.5  # doubled after each slice, up to WAIT_SLICE_S
WAIT_SLICE_S = 2.0  # the longest a cancel waits to be seen (far below a poll interval)
MIN_WAIT_S = 0.05
KILL_GRACE_S = 10.0
ENDED = frozenset({"exited", "dead"})


@contextlib.contextmanager
def engine_errors(action: str, host: str) -> Iterator[None]:
    """Translate the SDK's exceptions into ptm's, naming what was being done."""
    try:
        yield
    except docker.errors.APIError as exc:
        raise ContainerError(f"{action}: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise RuntimeUnavailable(
            f"{action}: the Docker engine at {host} cannot be reached: {exc}"
        ) from exc


class DockerRuntime:
    """``Runtime`` on a Docker engine (``docker_host`` or, when None, DOCKER_HOST).

    ``labels`` go on every container it creates and narrow what ``find_*`` return (tests use
    them to keep runs apart). The engine is contacted at first use, not at construction.
    """

    def __init__(
        self, docker_host: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> None:
        self.host = docker_host or os.environ.get("DOCKER_HOST") or "the default socket"
        self._docker_host = docker_host
        self._labels = dict(labels or {})
        self._client: docker.DockerClient | None = None
        self._connecting = threading.Lock()

    # ---- engine -----------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        with self._connecting:
            if self._client is None:
                with engine_errors("connecting", self.host):
                    self._client = self._connect()
            return self._client

    def _connect(self) -> docker.DockerClient:
        if self._docker_host is None:
            return docker.from_env(version="auto")
        return docker.DockerClient(base_url=self._docker_host, version="auto")

    def close(self) -> None:
        with self._connecting:
            if self._client is not None:
                self._client.close()
                self._client = None

    def ping(self) -> str:
        with engine_errors("asking the engine's version", self.host):
            version: str = self.client.version()["Version"]
            return version

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return engine_errors(action, self.host)

    # ---- images -----------------------------------------------------------------------------

    def ensure_image(
        self, image: str, *, policy: PullPolicy, progress: Progress | None = None
    ) -> ImageRef:
        """Pull by ``policy``; a digest reference present locally is never pulled again."""
        repository, tag_or_digest, pinned = split_reference(image)
        present = self._local_image(image)
        if present is not None and (policy != "always" or pinned):
            return self._image_ref(present, repository, tag_or_digest if pinned else None)
        if policy == "never":
            raise ContainerError(
                f"image {image} is not present at this site and runtime.pull is never"
            )
        pulled_digest = self._pull(repository, tag_or_digest, progress)
        pulled = self._local_image(image)
        if pulled is None:
            raise ContainerError(f"pulling {image}: the engine reported success but has no image")
        wanted = tag_or_digest if pinned else pulled_digest
        return self._image_ref(pulled, repository, wanted)

    def _local_image(self, image: str) -> dict[str, Any] | None:
        with self._errors(f"looking up image {image}"):
            try:
                attrs: dict[str, Any] = self.client.images.get(image).attrs
            except docker.errors.ImageNotFound:
                return None
            return attrs

    def _pull(self, repository: str, tag_or_digest: str, progress: Progress | None) -> str | None:
        reporter = PullReporter(progress)
        with self._errors(f"pulling {repository}"):
            stream = self.client.api.pull(repository, tag=tag_or_digest, stream=True, decode=True)
            for event in stream:
                if "error" in event:
                    raise ContainerError(f"pulling {repository}: {event['error']}")
                reporter.report(event)
        return reporter.digest

    @staticmethod
    def _image_ref(attrs: Mapping[str, Any], repository: str, digest: str | None) -> ImageRef:
        repo_digests = attrs.get("RepoDigests") or []
        found = matching_repo_digest(repo_digests, repository, digest)
        if digest is not None and found is None:
            raise ContainerError(
                f"image {repository}@{digest} was asked for, but the engine's image "
                f"{attrs['Id']} has digests {', '.join(repo_digests) or 'none'}"
            )
        return ImageRef(image_id=str(attrs["Id"]), repo_digest=found)

    # ---- containers -------------------------------------------------------------------------

    def start(self, spec: ContainerSpec, image: ImageRef) -> ContainerRef:
        ref = self.create(spec, image)
        with self._errors(f"starting the container of task {spec.task_id}"):
            try:
                self.client.api.start(ref.container_id)
            except docker.errors.APIError:
                self.client.api.remove_container(ref.container_id, force=True)
                raise
        return ref

    def create(self, spec: ContainerSpec, image: ImageRef) -> ContainerRef:
        """Create the sandboxed container for ``spec`` without starting it."""
        check_network(spec.network)
        check_limits(spec)
        mounts = self._mounts(spec)
        self._open_output(spec)
        name = f"ptm-{spec.site}-{spec.task_id}-{uuid.uuid4().hex[:8]}"
        api = self.client.api
        # The low-level call: the high-level one inspects the new container before it returns,
        # a round trip on every task's way to its start.
        host_config = api.create_host_config(
            mounts=mounts,
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={spec.tmpfs_bytes},mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            privileged=False,
            mem_limit=spec.memory_bytes,
            memswap_limit=spec.memory_bytes,
            nano_cpus=int(spec.cpus * 1e9),
            pids_limit=spec.pids,
            network_mode=spec.network,
            log_config=docker.types.LogConfig(
                type="json-file",
                config={"max-size": str(max(8 * spec.log_bytes, 1024**2)), "max-file": "2"},
            ),
        )
        with self._errors(f"creating the container of task {spec.task_id}"):
            created = api.create_container(
                image.image_id,
                list(spec.command) if spec.command is not None else None,
                name=name,
                environment=self._environment(spec),
                labels=self._container_labels(spec),
                user=spec.user,
                host_config=host_config,
            )
        return ContainerRef(str(created["Id"]), spec.task_id, spec.site)

    @staticmethod
    def _mounts(spec: ContainerSpec) -> list[docker.types.Mount]:
        def bind(source: Path, target: str, *, read_only: bool) -> docker.types.Mount:
            if not source.exists():
                raise ContainerError(f"task {spec.task_id}: mount source {source} does not exist")
            return docker.types.Mount(
                target, str(source.resolve()), type="bind", read_only=read_only
            )

        mounts = [bind(spec.config_file, CONFIG_PATH, read_only=True)]
        if spec.input_dir is not None:
            mounts.append(bind(spec.input_dir, INPUT_PATH, read_only=True))
        mounts.append(bind(spec.output_dir, OUTPUT_PATH, read_only=False))
        for data in spec.data_mounts:
            check_mount_target(data.target)
            mounts.append(bind(data.source, data.target, read_only=True))
        return mounts

    @staticmethod
    def _open_output(spec: ContainerSpec) -> None:
        """The output folder is writable by the container's user only, never by everyone: a
        root agent hands it to that user (mode 0700); a non-root agent runs containers as
        itself (see ``execution.container_user``) and keeps it 0700."""
        owner = numeric_user(spec.user)
        try:
            if owner is not None and os.geteuid() == 0:
                os.chown(spec.output_dir, *owner)
            elif owner is None or owner[0] != os.geteuid():
                raise ContainerError(
                    f"task {spec.task_id}: this agent runs as uid {os.geteuid()}, not root, so "
                    f"it cannot give the container's user {spec.user!r} its output folder "
                    "without making it writable by everyone; leave runtime.user unset (a "
                    "non-root agent runs containers as itself) or set it to "
                    f"'{os.geteuid()}:{os.getegid()}'"
                )
            spec.output_dir.chmod(0o700)
            spec.config_file.chmod(0o644)
        except OSError as exc:
            raise ContainerError(f"task {spec.task_id}: preparing {exc.filename}: {exc}") from exc

    @staticmethod
    def _environment(spec: ContainerSpec) -> dict[str, str]:
        return {
            "HOME": "/tmp",
            **spec.environment,
            "PTM_TASK_ID": spec.task_id,
            "PTM_SITE": spec.site,
            "PTM_CONFIG": CONFIG_PATH,
            "PTM_OUTPUT": OUTPUT_PATH,
        }

    def _container_labels(self, spec: ContainerSpec) -> dict[str, str]:
        return {
            **spec.labels,
            **self._labels,
            LABEL_MANAGED: "1",
            LABEL_SITE: spec.site,
            LABEL_TASK: spec.task_id,
            LABEL_IMAGE: spec.image,
            LABEL_LOG_BYTES: str(spec.log_bytes),
        }

    def wait(
        self,
        ref: ContainerRef,
        *,
        timeout_s: float,
        cancelled: Callable[[], bool] | None = None,
    ) -> Outcome:
        """Block on the engine's own wait (as ``docker run`` does: the end is known at once),
        in slices (half a second, doubling up to WAIT_SLICE_S) so that a cancel is seen
        between them; the last slice ends at the time limit, which counts from the
        container's own start. A container created but never started (the agent died in
        between) is started now."""
        attrs = self._inspect(ref)
        if attrs["State"]["Status"] == "created":
            with self._errors(f"starting the container of task {ref.task_id}"):
                self.client.api.start(ref.container_id)
            attrs = self._inspect(ref)
        deadline = time.monotonic() + timeout_s - seconds_since(attrs["State"].get("StartedAt"))
        timed_out = was_cancelled = False
        ended = attrs["State"]["Status"] in ENDED
        slice_s = FIRST_WAIT_SLICE_S
        while not ended:
            was_cancelled = cancelled is not None and cancelled()
            timed_out = not was_cancelled and time.monotonic() >= deadline
            if was_cancelled or timed_out:
                attrs = self._kill_and_wait(ref)
                break
            ended = self._ended_within(ref, min(slice_s, deadline - time.monotonic()))
            slice_s = min(WAIT_SLICE_S, 2 * slice_s)
            if ended:
                attrs = self._inspect(ref)
        state = attrs["State"]
        return Outcome(
            exit_code=None if (timed_out or was_cancelled) else int(state["ExitCode"]),
            timed_out=timed_out,
            cancelled=was_cancelled,
            oom_killed=bool(state.get("OOMKilled")),
            log=self._log(ref, log_limit(attrs)),
        )

    def _ended_within(self, ref: ContainerRef, seconds: float) -> bool:
        """Whether the container ended within ``seconds`` (the engine answers at its end)."""
        with self._errors(f"waiting for the container of task {ref.task_id}"):
            try:
                # The SDK hands the timeout to requests, which takes fractions (its stub: int).
                slice_s: Any = max(MIN_WAIT_S, seconds)
                self.client.api.wait(ref.container_id, timeout=slice_s)
            except (requests.ReadTimeout, requests.ConnectionError) as exc:
                if _read_timed_out(exc):
                    return False
                raise
            except docker.errors.NotFound as exc:
                raise ContainerError(
                    f"the container of task {ref.task_id} ({ref.container_id[:12]}) is gone"
                ) from exc
        return True

    def _inspect(self, ref: ContainerRef) -> dict[str, Any]:
        with self._errors(f"inspecting the container of task {ref.task_id}"):
            try:
                attrs: dict[str, Any] = self.client.api.inspect_container(ref.container_id)
            except docker.errors.NotFound as exc:
                raise ContainerError(
                    f"the container of task {ref.task_id} ({ref.container_id[:12]}) is gone"
                ) from exc
            return attrs

    def _kill_and_wait(self, ref: ContainerRef) -> dict[str, Any]:
        self.kill(ref)
        deadline = time.monotonic() + KILL_GRACE_S
        attrs = self._inspect(ref)
        while attrs["State"]["Status"] not in ENDED and time.monotonic() < deadline:
            time.sleep(0.05)
            attrs = self._inspect(ref)
        return attrs

    def _log(self, ref: ContainerRef, limit: int) -> bytes:
        cap = LogCap(limit)
        with self._errors(f"reading the log of task {ref.task_id}"):
            for chunk in self.client.api.logs(
                ref.container_id, stdout=True, stderr=True, stream=True, follow=False
            ):
                cap.add(chunk)
        return cap.value()

    def find_containers(self, site: str) -> list[ContainerRef]:
        return self._find(site, running_only=False)

    def find_running(self, site: str) -> list[ContainerRef]:
        return self._find(site, running_only=True)

    def _find(self, site: str, *, running_only: bool) -> list[ContainerRef]:
        wanted = {**self._labels, LABEL_MANAGED: "1", LABEL_SITE: site}
        filters = {"label": [f"{key}={value}" for key, value in wanted.items()]}
        with self._errors(f"listing the containers of site {site}"):
            found = self.client.api.containers(all=not running_only, filters=filters)
        return [
            ContainerRef(str(entry["Id"]), str(entry["Labels"][LABEL_TASK]), site)
            for entry in found
            if entry.get("Labels", {}).get(LABEL_TASK)
        ]

    def kill(self, ref: ContainerRef) -> None:
        with self._errors(f"killing the container of task {ref.task_id}"):
            try:
                self.client.api.kill(ref.container_id)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: it is not running (any more)
                    raise

    def remove(self, ref: ContainerRef) -> None:
        with self._errors(f"removing the container of task {ref.task_id}"):
            try:
                self.client.api.remove_container(ref.container_id, force=True)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: removal already in progress
                    raise


def _read_timed_out(exc: requests.RequestException) -> bool:
    """A wait that ran out of its slice (on a socket requests names it a ConnectionError)."""
    return isinstance(exc, requests.ReadTimeout) or any(
        isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in exc.args
    )


def log_limit(attrs: Mapping[str, Any]) -> int:
    """The log cap chosen at start travels as a label (so it holds across an agent restart)."""
    value = str((attrs["Config"].get("Labels") or {}).get(LABEL_LOG_BYTES, ""))
    return int(value) if value.isdigit() else DEFAULT_LOG_BYTES


def seconds_since(timestamp: str | None) -> float:
    """Seconds since an engine timestamp (RFC 3339 with nanoseconds, UTC); 0 when unknown."""
    if not timestamp or timestamp.startswith("0001-"):
        return 0.0
    whole, _, fraction = timestamp.rstrip("Z").partition(".")
    try:
        started = datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6]:0<6}+00:00")
    except ValueError:
        return 0.0
    return max(0.0, (datetime.now(timezone.utc) - started).total_seconds())
