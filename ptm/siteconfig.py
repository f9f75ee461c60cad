"""A site's config file, validated and turned into frozen values the agent can trust.

``load_site_config`` checks the file against ``schemas/site.schema.json`` (InvalidDocument with
every problem), then checks what a schema cannot say (ConfigError with every problem, each as
``file: field: message [rule]``):

- ``policy.allowed_images`` entries are exact ``name@sha256:<64 hex>`` digests or full-match
  regular expressions, compiled here so that a bad one stops the agent before it starts;
- mount targets are absolute, have no ``.``/``..`` parts, do not overlap ``/ptm`` (the
  container contract) and do not repeat;
- ``runtime.user`` may be uid 0 only with ``runtime.allow_root: true``; ``runtime.network``
  may not be ``host``;
- ``runtime.docker_host``, ``runtime.podman`` and ``runtime.slurm`` only with their
  ``runtime.engine``; engine slurm needs ``runtime.slurm``, whose ``sbatch_options`` may not
  set what ptm sets per job (``SBATCH_OWN_OPTIONS``);
- ``policy.require_signed_tasks`` needs ``policy.allowed_signers``;
- relative paths (and a local ``registry.url``) are relative to the config file's folder;
  a ``file://`` URL must be absolute.

Defaults: workdir /var/lib/ptm, poll_interval 30, policy allows no image until
``allowed_images`` says so, requires signed tasks, approval and release auto; limits as in
``Limits``; runtime pulls always, network none, user 65534:65534.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from ptm.encryption import EncryptionError, RecipientKey, is_key_line, read_key_entry
from ptm.errors import ConfigError, Problem
from ptm.names import is_valid_name
from ptm.schema import load_document, validate
from ptm.task import parse_memory

Approval = Literal["auto", "manual"]
Release = Literal["auto", "manual"]
PullPolicy = Literal["always", "if-missing", "never"]
Engine = Literal["docker", "podman", "slurm"]
NodeEngine = Literal["podman", "docker"]

CONTAINER_ROOT = "/ptm"
DEFAULT_WORKDIR = Path("/var/lib/ptm")
DEFAULT_USER = "65534:65534"
_DIGEST_ENTRY = re.compile(r"[^@\s]+@sha256:[0-9a-f]{64}")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class RegistrySettings:
    url: str  # a URL, user@host:path, or an absolute local path
    branch: str = "main"
    ssh_key: Path | None = None
    known_hosts: Path | None = None  # pins the ssh host key (UserKnownHostsFile, strict)


@dataclass(frozen=True)
class ImageRule:
    """One ``allowed_images`` entry: an exact digest (``pattern`` None) or a full-match regex."""

    text: str
    pattern: re.Pattern[str] | None

    def matches(self, image: str) -> bool:
        if self.pattern is None:
            return image == self.text
        return self.pattern.fullmatch(image) is not None


@dataclass(frozen=True)
class PolicySettings:
    allowed_images: tuple[ImageRule, ...] = ()
    require_digest: bool = False
    require_signed_tasks: bool = True
    allowed_signers: Path | None = None
    trusted_submitters: tuple[str, ...] = ()
    trusted_cancellers: tuple[str, ...] = ()  # besides each task's own verified submitter
    approval: Approval = "auto"
    release: Release = "auto"
    require_encryption: bool = False
    encrypt_to: tuple[RecipientKey, ...] = ()  # besides each task's own verified submitter

    def image_allowed(self, image: str) -> bool:
        return any(rule.matches(image) for rule in self.allowed_images)


@dataclass(frozen=True)
class Limits:
    timeout: int = 3600
    memory_bytes: int = 2 * 1024**3
    cpus: float = 2.0
    pids: int = 256
    output_bytes: int = 100 * 1024**2
    output_files: int = 1000
    output_depth: int = 16
    log_bytes: int = 1024**2
    max_parallel: int = 2


@dataclass(frozen=True)
class PodmanSettings:
    socket: str | None = None  # None: the running user's default podman.sock


# sbatch options ptm sets for every job itself; a site's extra options may not replace them.
SBATCH_OWN_OPTIONS = (
    "--mem", "--cpus-per-task", "--time", "--job-name", "--comment", "--output", "--error",
    "--chdir", "--wrap", "--ntasks", "--nodes", "--parsable", "--export", "--mem-per-cpu",
    "--requeue", "--no-requeue", "--array",  # a requeued job would run its task twice
)  # fmt: skip


@dataclass(frozen=True)
class SlurmSettings:
    """Tasks as batch jobs; ``shared_dir`` is a folder the compute nodes see at the same path."""

    shared_dir: Path = Path("/shared/ptm")
    partition: str | None = None
    account: str | None = None
    sbatch_options: tuple[str, ...] = ()
    node_engine: NodeEngine = "podman"  # what runs the container on the compute node
    node_engine_options: tuple[str, ...] = ()  # global options for it, e.g. podman --root DIR


@dataclass(frozen=True)
class RuntimeSettings:
    docker_host: str | None = None
    pull: PullPolicy = "always"
    network: str = "none"
    user: str = DEFAULT_USER
    allow_root: bool = False
    engine: Engine = "docker"
    podman: PodmanSettings = field(default_factory=PodmanSettings)
    slurm: SlurmSettings | None = None  # set exactly when engine is slurm


@dataclass(frozen=True)
class Mount:
    """Site data given to containers, always read-only."""

    source: Path
    target: str


@dataclass(frozen=True)
class SftpTarget:
    name: str
    host: str
    user: str
    key: Path
    host_key: str
    port: int = 22
    path: str = "."
    encrypt_to: tuple[RecipientKey, ...] = ()  # delivered files are encrypted to these keys


@dataclass(frozen=True)
class SiteConfig:
    site: str
    registry: RegistrySettings
    source: Path | None = field(default=None, compare=False)  # the file, when loaded from one
    workdir: Path = DEFAULT_WORKDIR
    poll_interval: float = 30  # fractions allowed, from 0.5 s (the schema's minimum)
    policy: PolicySettings = field(default_factory=PolicySettings)
    limits: Limits = field(default_factory=Limits)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    environment: Mapping[str, str] = field(default_factory=dict, hash=False)
    mounts: tuple[Mount, ...] = ()
    signing_key: Path | None = None
    sftp_targets: Mapping[str, SftpTarget] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "environment", MappingProxyType(dict(self.environment)))
        object.__setattr__(self, "sftp_targets", MappingProxyType(dict(self.sftp_targets)))

    def image_allowed(self, image: str) -> bool:
        """True when ``image`` matches an allowed_images entry (a digest exactly, a regex fully)."""
        return self.policy.image_allowed(image)

    @classmethod
    def from_document(
        cls, document: Mapping[str, Any], *, source: str, base_dir: Path, path: Path | None = None
    ) -> SiteConfig:
        """Validate a parsed site config; relative paths are taken from ``base_dir``."""
        validate(document, "site", source=source)
        builder = _Builder(source, base_dir.absolute())
        config = builder.build(document, path)
        builder.raise_problems()
        return config


def load_site_config(path: Path) -> SiteConfig:
    """Load, validate and check the site config at ``path``."""
    source = str(path)
    document = load_document(path, "site", source=source)
    return SiteConfig.from_document(document, source=source, base_dir=path.parent, path=path)


class _Builder:
    """Turns a schema-valid document into a SiteConfig, collecting every semantic problem."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[Problem] = []

    def problem(self, path: str, rule: str, message: str) -> None:
        self.problems.append(Problem(self.source, path, rule, message))

    def raise_problems(self) -> None:
        if self.problems:
            raise ConfigError("\n".join(str(problem) for problem in self.problems))

    def local_path(self, value: str) -> Path:
        return Path(os.path.normpath(self.base_dir / value))

    def optional_path(self, value: str | None) -> Path | None:
        return self.local_path(value) if value is not None else None

    def build(self, document: Mapping[str, Any], path: Path | None) -> SiteConfig:
        if not is_valid_name(document["site"]):
            self.problem("site", "name", f"{document['site']!r} is not a valid site name")
        workdir = self.optional_path(document.get("workdir"))
        return SiteConfig(
            site=document["site"],
            registry=self.registry(document["registry"]),
            source=path,
            workdir=workdir if workdir is not None else DEFAULT_WORKDIR,
            poll_interval=float(document.get("poll_interval", 30)),
            policy=self.policy(document.get("policy", {})),
            limits=self.limits(document.get("limits", {})),
            runtime=self.runtime(document.get("runtime", {})),
            environment=document.get("environment", {}),
            mounts=self.mounts(document.get("mounts", [])),
            signing_key=self.optional_path(document.get("signing_key")),
            sftp_targets=self.sftp_targets(document.get("sftp_targets", {})),
        )

    def registry(self, section: Mapping[str, Any]) -> RegistrySettings:
        url: str = section["url"]
        if url.startswith("file://") and not url.startswith("file:///"):
            self.problem("registry.url", "url", f"{url!r}: a file:// URL must be absolute")
        elif not _URL.match(url) and not _is_scp_like(url):
            url = str(self.local_path(url))
        branch = section.get("branch", "main")
        return RegistrySettings(
            url,
            branch,
            self.optional_path(section.get("ssh_key")),
            self.optional_path(section.get("known_hosts")),
        )

    def policy(self, section: Mapping[str, Any]) -> PolicySettings:
        rules = tuple(
            self.image_rule(index, text)
            for index, text in enumerate(section.get("allowed_images", []))
        )
        settings = PolicySettings(
            allowed_images=tuple(rule for rule in rules if rule is not None),
            require_digest=section.get("require_digest", False),
            require_signed_tasks=section.get("require_signed_tasks", True),
            allowed_signers=self.optional_path(section.get("allowed_signers")),
            trusted_submitters=tuple(section.get("trusted_submitters", ())),
            trusted_cancellers=tuple(section.get("trusted_cancellers", ())),
            approval=cast(Approval, section.get("approval", "auto")),
            release=cast(Release, section.get("release", "auto")),
            require_encryption=section.get("require_encryption", False),
            encrypt_to=self.public_keys("policy.encrypt_to", section.get("encrypt_to", [])),
        )
        if settings.require_signed_tasks and settings.allowed_signers is None:
            message = "must be set while policy.require_signed_tasks is true"
            self.problem("policy.allowed_signers", "required", message)
        if settings.require_encryption and settings.allowed_signers is None:
            message = "must be set while policy.require_encryption is true (submitters' keys)"
            self.problem("policy.allowed_signers", "required", message)
        return settings

    def image_rule(self, index: int, text: str) -> ImageRule | None:
        if _DIGEST_ENTRY.fullmatch(text):
            return ImageRule(text, None)
        try:
            return ImageRule(text, re.compile(text))
        except re.error as exc:
            message = f"{text!r} is not a valid regular expression: {exc}"
            self.problem(f"policy.allowed_images[{index}]", "regex", message)
            return None

    def limits(self, section: Mapping[str, Any]) -> Limits:
        defaults = Limits()
        memory = section.get("memory")
        values = {key: section[key] for key in _LIMIT_KEYS if key in section}
        if "cpus" in values:
            values["cpus"] = float(values["cpus"])
        return Limits(
            **values,
            memory_bytes=parse_memory(memory) if memory is not None else defaults.memory_bytes,
        )

    def runtime(self, section: Mapping[str, Any]) -> RuntimeSettings:
        settings = RuntimeSettings(
            docker_host=section.get("docker_host"),
            pull=cast(PullPolicy, section.get("pull", "always")),
            network=section.get("network", "none"),
            user=section.get("user", DEFAULT_USER),
            allow_root=section.get("allow_root", False),
            engine=cast(Engine, section.get("engine", "docker")),
            podman=PodmanSettings(section.get("podman", {}).get("socket")),
            slurm=self.slurm(section["slurm"]) if "slurm" in section else None,
        )
        self.engine_sections(settings, section)
        if int(settings.user.split(":")[0]) == 0 and not settings.allow_root:
            message = "runs containers as root; set runtime.allow_root: true to allow that"
            self.problem("runtime.user", "allow_root", message)
        if settings.network == "host":
            message = "would give containers this machine's network; use none or a network "
            message += "this site controls"
            self.problem("runtime.network", "network", message)
        return settings

    def engine_sections(self, settings: RuntimeSettings, section: Mapping[str, Any]) -> None:
        """Each engine's settings only with that engine, so none is silently ignored."""
        owners = {"docker_host": "docker", "podman": "podman", "slurm": "slurm"}
        for key, engine in owners.items():
            if key in section and settings.engine != engine:
                message = f"is set, but runtime.engine is {settings.engine}, not {engine}"
                self.problem(f"runtime.{key}", "engine", message)
        if settings.engine == "slurm" and settings.slurm is None:
            self.problem("runtime.slurm", "required", "must be set while runtime.engine is slurm")

    def slurm(self, section: Mapping[str, Any]) -> SlurmSettings:
        options = tuple(section.get("sbatch_options", ()))
        for index, option in enumerate(options):
            name = option.split("=", 1)[0]
            if name in SBATCH_OWN_OPTIONS:
                message = f"{name} is set by ptm for every job (from the task's limits)"
                self.problem(f"runtime.slurm.sbatch_options[{index}]", "sbatch-option", message)
        shared = self.local_path(section["shared_dir"])
        return SlurmSettings(
            shared_dir=shared,
            partition=section.get("partition"),
            account=section.get("account"),
            sbatch_options=options,
            node_engine=cast(NodeEngine, section.get("node_engine", "podman")),
            node_engine_options=tuple(section.get("node_engine_options", ())),
        )

    def mounts(self, entries: list[Mapping[str, Any]]) -> tuple[Mount, ...]:
        mounts: list[Mount] = []
        for index, entry in enumerate(entries):
            target = entry["target"]
            reason = _mount_target_problem(target, [m.target for m in mounts])
            if reason is not None:
                self.problem(f"mounts[{index}].target", "mount-target", f"{target!r} {reason}")
            mounts.append(Mount(self.local_path(entry["source"]), target))
        return tuple(mounts)

    def sftp_targets(self, section: Mapping[str, Any]) -> dict[str, SftpTarget]:
        targets = {}
        for name, entry in section.items():
            if not is_valid_name(name):  # the schema says so too; names.py is the authority
                self.problem("sftp_targets", "name", f"{name!r} is not a valid target name")
            targets[name] = SftpTarget(
                name=name,
                host=entry["host"],
                user=entry["user"],
                key=self.local_path(entry["key"]),
                host_key=entry["host_key"],
                port=entry.get("port", 22),
                path=entry.get("path", "."),
                encrypt_to=self.public_keys(
                    f"sftp_targets.{name}.encrypt_to", entry.get("encrypt_to", [])
                ),
            )
        return targets

    def public_keys(self, field: str, entries: list[str]) -> tuple[RecipientKey, ...]:
        """Key lines, or files (relative to the config) holding one, as checked keys."""
        keys = []
        for index, entry in enumerate(entries):
            where = entry if is_key_line(entry) else str(self.local_path(entry))
            try:
                keys.append(read_key_entry(where, source="the key"))
            except EncryptionError as exc:
                self.problem(f"{field}[{index}]", "public-key", str(exc))
        return tuple(keys)


_LIMIT_KEYS = (
    "timeout",
    "cpus",
    "pids",
    "output_bytes",
    "output_files",
    "output_depth",
    "log_bytes",
    "max_parallel",
)


def _is_scp_like(url: str) -> bool:
    """git's rule: ``host:path`` and ``user@host:path`` are SSH when no / precedes the colon."""
    head, colon, _ = url.partition(":")
    return bool(colon) and "/" not in head


def _mount_target_problem(target: str, earlier: list[str]) -> str | None:
    if any(part in (".", "..") for part in target.split("/")):
        return "must not contain . or .. parts"
    normal = _normal_target(target)
    if _overlaps(normal, CONTAINER_ROOT):
        return f"overlaps {CONTAINER_ROOT}, where containers find their task files"
    if normal in (_normal_target(other) for other in earlier):
        return "is already the target of another mount"
    return None


def _normal_target(target: str) -> str:
    """``//data/`` and ``/data`` name the same folder in a container."""
    return "/" + "/".join(part for part in target.split("/") if part)


def _overlaps(first: str, second: str) -> bool:
    def inside(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip("/") + "/")

    return inside(first, second) or inside(second, first)
