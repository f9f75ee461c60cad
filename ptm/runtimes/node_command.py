"""The container engine's command line on a compute node (Podman's or Docker's, which agree on
every option used here): resolving images, and the job script that runs one sandboxed
container, for the Slurm backend.

The script is the batch job. It writes ``started`` when it begins, runs the container in the
foreground with its output into ``log``, and writes the container's exit code to ``exit`` only
when the container ended by itself: if the job is signalled (``scancel``, Slurm's time limit),
its trap kills the container and leaves ``exit`` unwritten, so that the job's state tells why.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptm.errors import CommandFailed, ContainerError, RuntimeUnavailable
from ptm.process import run
from ptm.runtimes.base import (
    CONFIG_PATH,
    INPUT_PATH,
    LABEL_IMAGE,
    LABEL_MANAGED,
    LABEL_SITE,
    LABEL_TASK,
    OUTPUT_PATH,
    ContainerSpec,
    ImageRef,
    Progress,
    PullPolicy,
)
from ptm.runtimes.images import matching_repo_digest, split_reference

PULL_TIMEOUT_S = 3600


@dataclass(frozen=True)
class NodeEngine:
    """``podman`` or ``docker`` with the site's global options (e.g. ``--root DIR``)."""

    name: str
    options: tuple[str, ...] = ()

    def command(self, *args: str) -> list[str]:
        return [self.name, *self.options, *args]

    def ensure_image(
        self, image: str, *, policy: PullPolicy, progress: Progress | None = None
    ) -> ImageRef:
        repository, tag_or_digest, pinned = split_reference(image)
        wanted = tag_or_digest if pinned else None
        present = self._inspect(image)
        if present is not None and (policy != "always" or pinned):
            return image_ref(present, repository, wanted)
        if policy == "never":
            raise ContainerError(
                f"image {image} is not present at this site and runtime.pull is never"
            )
        if progress is not None:
            progress(f"pulling {image} with {self.name}")
        self._run(f"pulling {image}", "pull", "--quiet", image, timeout=PULL_TIMEOUT_S)
        pulled = self._inspect(image)
        if pulled is None:
            raise ContainerError(f"pulling {image}: {self.name} reported success but has no image")
        return image_ref(pulled, repository, wanted)

    def _inspect(self, image: str) -> dict[str, Any] | None:
        code, out, _ = self._run(
            f"looking up image {image}", "image", "inspect", image, check=False
        )
        if code != 0:
            return None
        found: list[dict[str, Any]] = json.loads(out)
        return found[0] if found else None

    def _run(
        self, action: str, *args: str, check: bool = True, timeout: float = 120
    ) -> tuple[int, str, str]:
        try:
            return run(self.command(*args), check=check, timeout=timeout)
        except CommandFailed as exc:
            said = (exc.stderr.strip() or exc.stdout.strip())[:2000]
            raise ContainerError(f"{action}: {self.name} exited {exc.returncode}: {said}") from exc
        except OSError as exc:
            raise RuntimeUnavailable(f"{action}: {self.name} cannot be run: {exc}") from exc


def image_ref(attrs: dict[str, Any], repository: str, digest: str | None) -> ImageRef:
    """Podman's CLI gives the bare hex ID, Docker's ``sha256:…``: ptm records the latter."""
    image_id = str(attrs["Id"])
    image_id = image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"
    repo_digests = attrs.get("RepoDigests") or []
    found = matching_repo_digest(repo_digests, repository, digest)
    if digest is not None and found is None:
        raise ContainerError(
            f"image {repository}@{digest} was asked for, but the engine's image {image_id} has "
            f"digests {', '.join(repo_digests) or 'none'}"
        )
    return ImageRef(image_id=image_id, repo_digest=found)


def run_options(spec: ContainerSpec, image: ImageRef, container: str) -> list[str]:
    """``run`` and its options: the same sandbox as the Docker backend builds."""
    options = [
        "run", "--rm", "--pull=never", "--sig-proxy=false", f"--name={container}",
        "--read-only", f"--tmpfs=/tmp:rw,nosuid,nodev,size={spec.tmpfs_bytes},mode=1777",
        "--cap-drop=ALL", "--security-opt=no-new-privileges", f"--user={spec.user}",
        f"--memory={spec.memory_bytes}", f"--memory-swap={spec.memory_bytes}",
        f"--cpus={spec.cpus}", f"--pids-limit={spec.pids}", f"--network={spec.network}",
    ]  # fmt: skip
    labels = {
        **spec.labels,
        LABEL_MANAGED: "1",
        LABEL_SITE: spec.site,
        LABEL_TASK: spec.task_id,
        LABEL_IMAGE: spec.image,
    }
    options += [f"--label={key}={value}" for key, value in labels.items()]
    options += [f"--mount={mount}" for mount in bind_mounts(spec)]
    environment = {
        "HOME": "/tmp",
        **spec.environment,
        "PTM_TASK_ID": spec.task_id,
        "PTM_SITE": spec.site,
        "PTM_CONFIG": CONFIG_PATH,
        "PTM_OUTPUT": OUTPUT_PATH,
    }
    options += [f"--env={key}={value}" for key, value in environment.items()]
    options.append(image.image_id.removeprefix("sha256:"))
    return options + list(spec.command or ())


def bind_mounts(spec: ContainerSpec) -> list[str]:
    binds = [(spec.config_file, CONFIG_PATH, True)]
    if spec.input_dir is not None:
        binds.append((spec.input_dir, INPUT_PATH, True))
    binds.append((spec.output_dir, OUTPUT_PATH, False))
    binds += [(mount.source, mount.target, True) for mount in spec.data_mounts]
    mounts = []
    for source, target, read_only in binds:
        path = str(Path(source).resolve())
        if any(mark in path + target for mark in (",", "\n", "=")):
            raise ContainerError(
                f"task {spec.task_id}: mount {path} -> {target}: a path with ',', '=' or a "
                "line break cannot be given to the node engine"
            )
        mounts.append(f"type=bind,source={path},target={target}" + (",ro=true" * read_only))
    return mounts


def job_script(
    node: NodeEngine, spec: ContainerSpec, image: ImageRef, name: str, folder: Path
) -> str:
    engine = " ".join(shlex.quote(part) for part in node.command())
    run_line = " ".join(shlex.quote(part) for part in run_options(spec, image, name))
    quoted = shlex.quote(name)
    return f"""#!/bin/bash
# ptm: task {spec.task_id!r} of site {spec.site!r}; written by the agent, run by sbatch.
set -u
cd {shlex.quote(str(folder))} || exit 1
date +%s.%N > started.tmp && mv started.tmp started
signalled=0
stop() {{
    signalled=1
    {engine} kill {quoted} >/dev/null 2>&1
}}
trap stop TERM INT
{engine} {run_line} > log 2>&1 < /dev/null &
child=$!
wait "$child"
code=$?
while kill -0 "$child" 2>/dev/null; do
    wait "$child"
    code=$?
done
if [ "$signalled" = 0 ]; then
    echo "$code" > exit.tmp && mv exit.tmp exit
fi
{engine} rm --force {quoted} >/dev/null 2>&1
exit 0
"""
