"""Running one accepted task in a container and turning what happened into a result."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ptm.decisions import held_dir
from ptm.encryption import EncryptionError
from ptm.engine_wait import AgentStopping, EngineWait
from ptm.errors import ContainerError, DeliveryError, OutputRejected, PtmError
from ptm.gitrepo import GitRepo
from ptm.ledger import Ledger
from ptm.names import check_name
from ptm.outputs import OutputReport, collect_outputs
from ptm.result_layout import LOG_FILE, OUTPUT_DIR, SEALED_FILE, STATUS_FILE
from ptm.runtimes.base import DEFAULT_USER, ContainerRef, ContainerSpec, ImageRef, Outcome, Runtime
from ptm.runtimes.base import Mount as RuntimeMount
from ptm.schema import dump_yaml, load_yaml_file
from ptm.sealed import encrypt_folder, must_seal, plan_encryption, seal, unpublishable
from ptm.siteconfig import SiteConfig
from ptm.status import StatusRecord, utc_now_text
from ptm.sync import TaskSnapshot
from ptm.task import Task
from ptm.treecheck import write_tree
from ptm.workdir import WorkDir, write_atomically

CONFIG_NAME = "config.yaml"
HELD_STATES = frozenset({"completed", "failed"})
DELIVER_FILE = "deliver-to"


@dataclass(frozen=True)
class RunFolders:
    """Host folders of one run: the config file, the task's input files and the output."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def collected_dir(self) -> Path:
        return self.root / "collected"


def prepare_run(workdir: WorkDir, task: Task, snapshot: TaskSnapshot, repo: GitRepo) -> RunFolders:
    """Write what the container will see into a fresh run folder: the config from the judged
    task, and the checked ``files/`` from the very blobs that were judged (never a checkout)."""
    try:
        return _prepare_run(workdir, task, snapshot, repo)
    except OSError as exc:
        shutil.rmtree(workdir.run_dir(task.id), ignore_errors=True)
        raise ContainerError(f"task {task.id}: preparing its run folder: {exc.strerror}") from exc


def _prepare_run(workdir: WorkDir, task: Task, snapshot: TaskSnapshot, repo: GitRepo) -> RunFolders:
    check_name(task.id, kind="task id", source="run folder")
    folders = RunFolders(workdir.run_dir(task.id))
    workdir.prepare()
    shutil.rmtree(folders.root, ignore_errors=True)  # a valid id under this agent's own folder
    folders.root.mkdir(mode=0o700)
    folders.config_file.write_text(dump_yaml(dict(task.config)), encoding="utf-8")
    files = snapshot.files
    if files is not None:
        write_tree(repo, files, folders.input_dir)
    else:
        folders.input_dir.mkdir(mode=0o755)
    folders.output_dir.mkdir(mode=0o700)
    return folders


def container_user(configured: str) -> str:
    """The user containers run as: the site's ``runtime.user`` for a root agent; a non-root
    agent (a ``ptm`` user in the ``docker`` group) runs them as itself, so that the output folder
    can be its and the container's alone (mode 0700), and its files can be collected and
    removed afterwards."""
    if os.geteuid() == 0 or configured != DEFAULT_USER:
        return configured
    return f"{os.geteuid()}:{os.getegid()}"


def container_spec(task: Task, site: SiteConfig, folders: RunFolders) -> ContainerSpec:
    limits = site.limits
    return ContainerSpec(
        task_id=task.id,
        site=site.site,
        image=task.image,
        command=task.command,
        environment=dict(site.environment),
        config_file=folders.config_file,
        input_dir=folders.input_dir,
        output_dir=folders.output_dir,
        data_mounts=tuple(RuntimeMount(m.source, m.target) for m in site.mounts),
        memory_bytes=min(task.memory_bytes or limits.memory_bytes, limits.memory_bytes),
        cpus=min(task.cpus or limits.cpus, limits.cpus),
        pids=limits.pids,
        network=site.runtime.network,
        user=container_user(site.runtime.user),
        log_bytes=limits.log_bytes,
        timeout_s=float(min(task.timeout or limits.timeout, limits.timeout)),
    )


class TaskExecution:
    """Pull, run, wait and collect for one task, recording each state on the ledger."""

    def __init__(
        self,
        *,
        site: SiteConfig,
        runtime: Runtime,
        ledger: Ledger,
        workdir: WorkDir,
        progress: Callable[[str], None] | None = None,
        engine: EngineWait | None = None,
    ) -> None:
        self.site = site
        self.runtime = runtime
        self.ledger = ledger
        self.workdir = workdir
        self.progress = progress
        self.engine = engine or EngineWait(threading.Event(), 1.0, logging.getLogger("ptm"))

    def run(
        self,
        task: Task,
        record: StatusRecord,
        *,
        cancelled: Callable[[], bool],
        attach_to: ContainerRef | None = None,
        concluded: Callable[[], None] | None = None,
    ) -> StatusRecord:
        """Run the task to its final record; ``concluded`` is told once that is committed,
        before the container is removed (its slot can go to the next task meanwhile). Not
        earlier: a cancel, a stop and the disk (max_parallel results being collected at most)
        rely on a run holding its slot until its result is recorded."""
        folders = RunFolders(self.workdir.run_dir(task.id))
        engine = self.engine
        if attach_to is None:
            try:
                record = plan_encryption(record, task, self.site)
            except EncryptionError as exc:  # fails before anything ran: nothing to publish
                shutil.rmtree(folders.root, ignore_errors=True)
                failed = replace(record, state="failed", reason=str(exc))
                return self._record(replace(failed, finished_at=utc_now_text()))
            try:
                record, image = self._image(task, record)
            except AgentStopping:
                raise
            except PtmError as exc:
                return self._finish(replace(record, state="failed", reason=f"image: {exc}"))
            record = replace(record, image_id=image.image_id, image_digest=image.repo_digest)
            if reason := digest_mismatch(task, image):
                return self._finish(replace(record, state="failed", reason=reason))
            if cancelled():
                return self._finish(replace(record, state="cancelled", reason="cancelled"))
            spec = container_spec(task, self.site, folders)
            tries: list[int] = []
            try:
                attach_to = engine.call("a start", task.id, lambda: self._start(spec, image, tries))
            except ContainerError as exc:
                return self._finish(replace(record, state="failed", reason=str(exc)))
            record = self._record(replace(record, state="running", started_at=utc_now_text()))
        elif record.state != "running":  # killed between the start and its record
            record = self._record(replace(record, state="running", started_at=utc_now_text()))
        ref = attach_to
        timeout = self._timeout(task)
        outcome = engine.call(
            "the container",
            task.id,
            lambda: self.runtime.wait(ref, timeout_s=timeout, cancelled=cancelled),
        )
        final = self._conclude(task, record, outcome, folders)
        if concluded is not None:
            concluded()
        engine.call("a removal", task.id, lambda: self.runtime.remove(ref))
        shutil.rmtree(folders.root, ignore_errors=True)
        return final

    def _image(self, task: Task, record: StatusRecord) -> tuple[StatusRecord, ImageRef]:
        """The task's image; ``pulling`` is recorded only when a pull may happen: not when the
        policy lets a present image be used and the engine has it."""
        if self.site.runtime.pull != "always" or task.is_pinned:
            try:
                present = self.runtime.ensure_image(task.image, policy="never")
            except PtmError:
                pass  # not present, or the engine does not answer: both go the long way
            else:
                return record, present
        if record.state != "pulling":
            record = self._record(replace(record, state="pulling"))
        return record, self.engine.call("a pull", task.id, lambda: self._pull(task))

    def _pull(self, task: Task) -> ImageRef:
        return self.runtime.ensure_image(
            task.image, policy=self.site.runtime.pull, progress=self.progress
        )

    def _start(self, spec: ContainerSpec, image: ImageRef, tries: list[int]) -> ContainerRef:
        """Start the container, unless an earlier try did before the engine went silent."""
        tries.append(1)
        if len(tries) > 1:
            runtime = self.runtime
            found = [r for r in runtime.find_containers(spec.site) if r.task_id == spec.task_id]
            if found:
                return found[0]
        return self.runtime.start(spec, image)

    def _timeout(self, task: Task) -> float:
        return float(min(task.timeout or self.site.limits.timeout, self.site.limits.timeout))

    def _conclude(
        self, task: Task, record: StatusRecord, outcome: Outcome, folders: RunFolders
    ) -> StatusRecord:
        record = replace(record, exit_code=outcome.exit_code, finished_at=utc_now_text())
        if outcome.cancelled:
            return self._finish(
                replace(record, state="cancelled", reason="cancelled by tasks/<id>/cancel.yaml"),
                log=outcome.log,
            )
        if outcome.timed_out:
            reason = f"killed after the time limit of {self._timeout(task):g}s"
            return self._finish(replace(record, state="timed_out", reason=reason), log=outcome.log)
        try:
            report = self._collect(folders)
        except OutputRejected as exc:
            reason = f"output refused, nothing of it was published: {exc}"
            return self._finish(replace(record, state="failed", reason=reason), log=outcome.log)
        record = with_outputs(record, report)
        if outcome.exit_code != 0:
            why = "out of memory (limits.memory)" if outcome.oom_killed else "non-zero exit"
            reason = f"the container exited with code {outcome.exit_code}: {why}"
            return self._finish(
                replace(record, state="failed", reason=reason),
                log=outcome.log,
                outputs=folders.collected_dir,
                deliver=task.deliver_sftp,
            )
        return self._finish(
            replace(record, state="completed", reason=None),
            log=outcome.log,
            outputs=folders.collected_dir,
            deliver=task.deliver_sftp,
        )

    def _collect(self, folders: RunFolders) -> OutputReport:
        limits = self.site.limits
        shutil.rmtree(folders.collected_dir, ignore_errors=True)
        try:
            return collect_outputs(
                folders.output_dir,
                folders.collected_dir,
                max_bytes=limits.output_bytes,
                max_files=limits.output_files,
                max_depth=limits.output_depth,
            )
        except OSError as exc:  # a full disk, most likely: the task fails, the agent goes on
            shutil.rmtree(folders.collected_dir, ignore_errors=True)
            raise OutputRejected(f"the output could not be collected: {exc.strerror}") from exc

    def _record(self, record: StatusRecord) -> StatusRecord:
        self.ledger.record(record)
        return record

    def _finish(
        self,
        record: StatusRecord,
        *,
        log: bytes | None = None,
        outputs: Path | None = None,
        deliver: str | None = None,
    ) -> StatusRecord:
        if record.finished_at is None:
            record = replace(record, finished_at=utc_now_text())
        if self.site.policy.release == "manual" and record.state in HELD_STATES:
            return self._hold(record, log or b"", outputs, deliver)
        return self._publish(record, log or b"", outputs, deliver)

    def _publish(
        self, record: StatusRecord, log: bytes, outputs: Path | None, deliver: str | None
    ) -> StatusRecord:
        """Commit the result; output files go to the SFTP target instead when the task asks."""
        if deliver is not None and outputs is not None:
            record = self._deliver(record, outputs, deliver)
            outputs = None
        if must_seal(record, self.site):  # log and outputs go out encrypted, or not at all
            return self._publish_sealed(record, log, outputs)
        self.ledger.record(record, log=log, outputs=outputs)
        return record

    def _publish_sealed(
        self, record: StatusRecord, log: bytes, outputs: Path | None
    ) -> StatusRecord:
        scratch = Path(tempfile.mkdtemp(prefix=".seal-", dir=self.workdir.runs))
        try:
            sealed: Path | None = scratch / SEALED_FILE
            try:
                record = seal(record, self.site, log, outputs, scratch / SEALED_FILE)
            except EncryptionError as exc:
                record, sealed = unpublishable(record, exc), None
            self.ledger.record(record, sealed=sealed)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return record

    def _deliver(self, record: StatusRecord, outputs: Path, target_name: str) -> StatusRecord:
        # Imported here: paramiko is slow to import and only deliveries need it.
        from ptm.delivery import deliver_files

        target = self.site.sftp_targets[target_name]
        try:
            if target.encrypt_to:  # each file as <name>.age, for the third party's keys only
                outputs = encrypt_folder(outputs, target.encrypt_to)
            receipt = deliver_files(target, outputs, f"{record.task}/{self.site.site}")
        except (DeliveryError, EncryptionError) as exc:
            reason = f"delivery to SFTP target {target_name!r} failed, no output published: {exc}"
            return replace(record, state="failed", reason=reason, outputs=())
        where = f"sftp://{receipt.host}:{receipt.port}{receipt.remote_dir}"
        return replace(record, delivered_to=where)

    def _hold(
        self, record: StatusRecord, log: bytes, outputs: Path | None, deliver: str | None
    ) -> StatusRecord:
        """``release: manual``: keep log and outputs at the site until the admin releases them."""
        held = held_dir(self.workdir, record.task)
        shutil.rmtree(held, ignore_errors=True)
        held.mkdir(parents=True)
        if outputs is not None and outputs.is_dir():
            shutil.move(str(outputs), held / OUTPUT_DIR)
        if deliver is not None:
            (held / DELIVER_FILE).write_text(deliver, encoding="utf-8")
        (held / LOG_FILE).write_bytes(log)
        write_atomically(held / STATUS_FILE, dump_yaml(record.to_document()))
        waiting = replace(
            record,
            state="reviewing",
            reason="finished; the result waits for the site admin's review "
            "(policy.release: manual)",
            exit_code=None,
            finished_at=None,
            outputs=(),
            skipped=(),
            delivered_to=None,
        )
        self.ledger.record(waiting)
        return waiting

    def release(self, task_id: str, *, decided_by: str) -> StatusRecord:
        """Publish what ``_hold`` kept, as it was when the task finished."""
        held = held_dir(self.workdir, task_id)
        document = load_yaml_file(held / STATUS_FILE, source=str(held / STATUS_FILE))
        record = replace(StatusRecord.from_document(document), decided_by=decided_by)
        outputs = held / OUTPUT_DIR
        deliver_file = held / DELIVER_FILE
        deliver = deliver_file.read_text(encoding="utf-8") if deliver_file.is_file() else None
        log = (held / LOG_FILE).read_bytes()
        record = self._publish(record, log, outputs if outputs.is_dir() else None, deliver)
        shutil.rmtree(held, ignore_errors=True)
        return record

    def discard_held(self, task_id: str) -> None:
        shutil.rmtree(held_dir(self.workdir, task_id), ignore_errors=True)


def digest_mismatch(task: Task, image: ImageRef) -> str | None:
    """A task pinned to ``name@sha256:…`` runs exactly that digest or nothing."""
    if not task.is_pinned:
        return None
    wanted = task.image.rsplit("@", 1)[1]
    found = image.repo_digest.rsplit("@", 1)[1] if image.repo_digest else None
    if found == wanted:
        return None
    return f"the image pulled has digest {found or 'unknown'}, but the task pins {wanted}"


def with_outputs(record: StatusRecord, report: OutputReport) -> StatusRecord:
    outputs = tuple(
        {"path": f"output/{path}", "bytes": size, "sha256": digest}
        for path, size, digest in report.files
    )
    skipped = tuple({"path": f"output/{path}", "reason": why} for path, why in report.skipped)
    return replace(record, outputs=outputs, skipped=skipped)
