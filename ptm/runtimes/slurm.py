"""The Slurm backend: each task is one batch job (``sbatch``) that runs the task's container on
a compute node through that node's Podman (or Docker, ``runtime.slurm.node_engine``), with the
same sandbox as the other backends (``runtimes/node_command.py`` builds its command line).

A job's files live in a job folder under ``runtime.slurm.shared_dir`` (which the agent and every
node see at the same path): ``job.sh``, the job ID, ``started`` (written when the job starts),
the container's log, and ``exit`` with its exit code, written by the job script itself. The
task's config, input and output folders must be on that storage too (the agent's ``workdir``).
Finding jobs again after a restart reads the job folders and the jobs' comments; telling their
ends apart needs no accounting database: the ``exit`` file when the job wrote one, otherwise
the job state ``scontrol`` still knows (``TIMEOUT``, ``OUT_OF_MEMORY``, ``CANCELLED``…).
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ptm.errors import CommandFailed, ContainerError, RuntimeUnavailable
from ptm.process import run
from ptm.runtimes.base import (
    DEFAULT_LOG_BYTES,
    ContainerRef,
    ContainerSpec,
    ImageRef,
    LogCap,
    Outcome,
    Progress,
    PullPolicy,
)
from ptm.runtimes.node_command import NodeEngine, job_script
from ptm.runtimes.sandbox import check_limits, check_mount_target, check_network, numeric_user
from ptm.siteconfig import SlurmSettings

POLL_INTERVAL_S = 1.0
CANCEL_GRACE_S = 60.0
MEMORY_HEADROOM = 128 * 1024**2  # the node engine's own processes run inside the job too
TIME_HEADROOM_S = 120  # Slurm's --time is a backstop; ptm kills at the task's own timeout
ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"})
GONE = "GONE"  # Slurm no longer knows the job (after MinJobAge)
SIGKILL_EXIT = 137


class SlurmRuntime:
    """``Runtime`` on a Slurm cluster, through its commands (``sbatch``, ``scontrol``…).

    ``job_label`` is an extra word in every job's comment that ``find_*`` also require (tests
    use it to keep runs apart).
    """

    def __init__(self, settings: SlurmSettings, *, job_label: str = "") -> None:
        self.settings = settings
        self.node = NodeEngine(settings.node_engine, settings.node_engine_options)
        self.job_label = job_label
        self.host = f"Slurm (shared folder {settings.shared_dir})"

    # ---- the cluster ------------------------------------------------------------------------

    def ping(self) -> str:
        version = self._slurm("asking Slurm's version", ["sinfo", "--version"]).strip()
        self._slurm("asking the controller", ["scontrol", "ping"])
        if not self.settings.shared_dir.is_dir():
            raise RuntimeUnavailable(
                f"{self.settings.shared_dir}: the shared folder does not exist "
                "(runtime.slurm.shared_dir)"
            )
        return f"{version}, node engine {self.node.name}"

    def _slurm(self, action: str, command: list[str], *, check: bool = True) -> str:
        try:
            code, out, err = run(command, check=False, timeout=60)
        except OSError as exc:
            raise RuntimeUnavailable(f"{action}: {command[0]} cannot be run: {exc}") from exc
        if check and code != 0:
            said = (err.strip() or out.strip())[:2000]
            raise RuntimeUnavailable(f"{action}: {' '.join(command[:2])} exited {code}: {said}")
        return out

    # ---- images -----------------------------------------------------------------------------

    def ensure_image(
        self, image: str, *, policy: PullPolicy, progress: Progress | None = None
    ) -> ImageRef:
        """Resolved by the node engine on this host, whose image store the nodes share (or
        mirror); jobs then run exactly that image ID and never pull."""
        return self.node.ensure_image(image, policy=policy, progress=progress)

    # ---- jobs -------------------------------------------------------------------------------

    def start(self, spec: ContainerSpec, image: ImageRef) -> ContainerRef:
        check_network(spec.network)
        check_limits(spec)
        for data in spec.data_mounts:
            check_mount_target(data.target)
        self._check_shared(spec)
        open_output(spec)
        name = f"{spec.task_id}-{uuid.uuid4().hex[:8]}"
        folder = self._site_dir(spec.site) / name
        folder.mkdir(parents=True, mode=0o700)
        container = f"ptm-{spec.site}-{name}"
        (folder / "task").write_text(spec.task_id)
        (folder / "label").write_text(self.job_label)
        (folder / "log-bytes").write_text(str(spec.log_bytes))
        (folder / "job.sh").write_text(job_script(self.node, spec, image, container, folder))
        (folder / "job.sh").chmod(0o700)
        try:
            out = self._slurm(
                f"submitting the job of task {spec.task_id}", self._sbatch(spec, folder)
            )
        except RuntimeUnavailable:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        job_id = out.strip().split(";")[0]
        (folder / "job-id").write_text(job_id)
        return ContainerRef(name, spec.task_id, spec.site)

    def _check_shared(self, spec: ContainerSpec) -> None:
        shared = self.settings.shared_dir.resolve()
        for path in (spec.config_file, spec.input_dir, spec.output_dir):
            if path is not None and not path.resolve().is_relative_to(shared):
                raise ContainerError(
                    f"task {spec.task_id}: {path} is not under {shared}, the folder the compute "
                    "nodes share (runtime.slurm.shared_dir); put the agent's workdir there"
                )

    def _sbatch(self, spec: ContainerSpec, folder: Path) -> list[str]:
        settings = self.settings
        memory_mib = math.ceil((spec.memory_bytes + MEMORY_HEADROOM) / 1024**2)
        command = [
            "sbatch", "--parsable", "--no-requeue",
            f"--job-name=ptm-{spec.site}-{spec.task_id}",
            f"--comment={self._comment(spec.site, spec.task_id, folder.name)}",
            f"--output={folder / 'slurm.out'}", f"--chdir={folder}",
            "--nodes=1", "--ntasks=1", f"--cpus-per-task={max(1, math.ceil(spec.cpus))}",
            f"--mem={memory_mib}M",
        ]  # fmt: skip
        if spec.timeout_s is not None:
            command.append(f"--time={math.ceil((spec.timeout_s + TIME_HEADROOM_S) / 60)}")
        if settings.partition:
            command.append(f"--partition={settings.partition}")
        if settings.account:
            command.append(f"--account={settings.account}")
        return [*command, *settings.sbatch_options, str(folder / "job.sh")]

    def _comment(self, site: str, task_id: str, name: str) -> str:
        return "/".join(part for part in ("ptm", self.job_label, site, task_id, name) if part)

    def _site_dir(self, site: str) -> Path:
        return self.settings.shared_dir / "jobs" / site

    def _folder(self, ref: ContainerRef) -> Path:
        return self._site_dir(ref.site) / ref.container_id

    def _job_id(self, ref: ContainerRef) -> str | None:
        try:
            return (self._folder(ref) / "job-id").read_text().strip() or None
        except FileNotFoundError:
            return None

    def job_state(self, job_id: str) -> str:
        """Slurm's state of the job (``RUNNING``, ``TIMEOUT``…), or ``GONE`` once Slurm has
        forgotten it; a controller that cannot be asked is RuntimeUnavailable, never GONE."""
        command = ["scontrol", "-o", "show", "job", job_id]
        try:
            code, out, err = run(command, check=False, timeout=60)
        except OSError as exc:
            raise RuntimeUnavailable(f"asking for job {job_id}: scontrol: {exc}") from exc
        if code != 0 and "Invalid job id" in err:
            return GONE
        if code != 0:
            said = (err.strip() or out.strip())[:2000]
            raise RuntimeUnavailable(f"asking for job {job_id}: scontrol exited {code}: {said}")
        for word in out.split():
            if word.startswith("JobState="):
                return word.removeprefix("JobState=")
        return GONE

    def wait(
        self,
        ref: ContainerRef,
        *,
        timeout_s: float,
        cancelled: Callable[[], bool] | None = None,
    ) -> Outcome:
        """Poll the job's files and state; the time limit counts from the job's start."""
        folder = self._folder(ref)
        if not folder.is_dir():
            raise ContainerError(f"the job of task {ref.task_id} ({ref.container_id}) is gone")
        while True:
            ended = self._ended(ref)
            if ended is not None:
                return ended
            if cancelled is not None and cancelled():
                return self._stop(ref, cancelled=True)
            started = _read_float(folder / "started")
            if started is not None and time.time() >= started + timeout_s:
                return self._stop(ref, timed_out=True)
            time.sleep(POLL_INTERVAL_S)

    def _ended(self, ref: ContainerRef) -> Outcome | None:
        folder = self._folder(ref)
        code = _read_int(folder / "exit")
        killed_by_ptm = (folder / "killed").exists()
        if code is not None:
            oom = code == SIGKILL_EXIT and not killed_by_ptm
            return Outcome(exit_code=code, oom_killed=oom, log=self._log(folder))
        job_id = self._job_id(ref)
        state = self.job_state(job_id) if job_id is not None else "PENDING"
        if state in ACTIVE:
            return None
        code = _read_int(folder / "exit")  # written just before the job ended
        if code is not None:
            return self._ended(ref)
        return Outcome(
            exit_code=None,
            timed_out=state == "TIMEOUT",
            cancelled=state == "CANCELLED" and killed_by_ptm,
            oom_killed=state == "OUT_OF_MEMORY",
            log=self._log(folder),
        )

    def _stop(
        self, ref: ContainerRef, *, timed_out: bool = False, cancelled: bool = False
    ) -> Outcome:
        self.kill(ref)
        deadline = time.monotonic() + CANCEL_GRACE_S
        job_id = self._job_id(ref)
        while job_id is not None and time.monotonic() < deadline:
            if self.job_state(job_id) not in ACTIVE:
                break
            time.sleep(0.2)
        log = self._log(self._folder(ref))
        return Outcome(exit_code=None, timed_out=timed_out, cancelled=cancelled, log=log)

    def _log(self, folder: Path) -> bytes:
        limit = _read_int(folder / "log-bytes") or DEFAULT_LOG_BYTES
        cap = LogCap(limit)
        try:
            with (folder / "log").open("rb") as log:
                size = os.fstat(log.fileno()).st_size
                cap.seen = max(0, size - 2 * limit)  # only the tail is ever kept
                log.seek(cap.seen)
                while chunk := log.read(1024**2):
                    cap.add(chunk)
        except FileNotFoundError:
            return b""
        return cap.value()

    def find_containers(self, site: str) -> list[ContainerRef]:
        folder = self._site_dir(site)
        if not folder.is_dir():
            return []
        submitted = self._submitted(site)
        found = []
        for entry in sorted(folder.iterdir()):
            task_id = _read_text(entry / "task")
            if task_id is None:
                continue
            if not (entry / "job-id").exists() and entry.name in submitted:
                # the agent stopped between sbatch and writing the job ID down
                (entry / "job-id").write_text(submitted[entry.name])
            if (entry / "job-id").exists() and self._ours(entry):
                found.append(ContainerRef(entry.name, task_id, site))
        return found

    def _ours(self, folder: Path) -> bool:
        return _read_text(folder / "label") == self.job_label

    def _submitted(self, site: str) -> dict[str, str]:
        """Job folder name → job ID, for this site's jobs Slurm still knows."""
        out = self._slurm(
            "listing the jobs", ["squeue", "--noheader", "--states=all", "--format=%i %k"]
        )
        prefix = self._comment(site, "", "").rstrip("/") + "/"
        jobs = {}
        for line in out.splitlines():
            job_id, _, comment = line.strip().partition(" ")
            if comment.startswith(prefix) and comment.count("/") == prefix.count("/") + 1:
                jobs[comment.rsplit("/", 1)[1]] = job_id
        return jobs

    def find_running(self, site: str) -> list[ContainerRef]:
        return [ref for ref in self.find_containers(site) if self._ended(ref) is None]

    def kill(self, ref: ContainerRef) -> None:
        """``scancel``: the job script's trap then kills the container on the node."""
        folder = self._folder(ref)
        if folder.is_dir():
            (folder / "killed").touch()
        job_id = self._job_id(ref)
        if job_id is None:
            return
        try:
            run(["scancel", job_id], timeout=60)
        except CommandFailed as exc:
            raise ContainerError(f"cancelling job {job_id} of task {ref.task_id}: {exc}") from exc
        except OSError as exc:
            raise RuntimeUnavailable(f"scancel cannot be run: {exc}") from exc

    def remove(self, ref: ContainerRef) -> None:
        folder = self._folder(ref)
        if not folder.is_dir():
            return
        job_id = self._job_id(ref)
        if job_id is not None and self.job_state(job_id) in ACTIVE:
            self._stop(ref)
        shutil.rmtree(folder, ignore_errors=True)


def open_output(spec: ContainerSpec) -> None:
    """As the Docker backend does: the output folder is the container user's alone (a root
    agent hands it over; a non-root agent's containers run as itself)."""
    owner = numeric_user(spec.user)
    try:
        if owner is not None and os.geteuid() == 0:
            os.chown(spec.output_dir, *owner)
        spec.output_dir.chmod(0o700)
        spec.config_file.chmod(0o644)
    except OSError as exc:
        raise ContainerError(f"task {spec.task_id}: preparing {exc.filename}: {exc}") from exc


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def _read_float(path: Path) -> float | None:
    text = _read_text(path)
    try:
        return float(text) if text else None
    except ValueError:
        return None
