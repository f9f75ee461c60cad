from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from ptm.errors import InvalidDocument, Problem
from ptm.schema import (
    ACCEPTED_FORMS,
    MAX_DOCUMENT_BYTES,
    SCHEMA_NAMES,
    dump_yaml,
    human_bytes,
    human_seconds,
    load_document,
    load_schema,
    load_yaml_file,
    load_yaml_text,
    problems_in,
    render_path,
)

BAD_INPUT = Path(__file__).parent / "bad_input"
COMMIT = "3f2c0e1d9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

# DESIGN.md's examples, verbatim where they are complete (the status example's "…" filled in).
DESIGN_TASK_YAML = """\
ptm: 1                                   # format version
image: myconsortium/age-stats:1.2        # may be pinned: name@sha256:…
sites: [hospital-a, hospital-b]          # or ["*"] for every site that accepts it
command: ["sh", "/app/run.sh"]           # optional; the image's own command otherwise
config:                                  # optional, free-form; given to the container as a file
  column: age
timeout: 600                             # seconds; a site may cap it lower
resources: {memory: 512m, cpus: 1}       # requests; a site may cap them lower
deliver: {sftp: ttp}                     # optional: send output to a site-approved SFTP target
description: Mean age per site
"""

DESIGN_SITE_YAML = """\
ptm: 1
site: hospital-a
registry:
  url: ssh://git@git.example.org/consortium/registry.git   # or a local path / file:// URL
  branch: main                                             # the tasks branch
  ssh_key: /etc/ptm/deploy_key                             # optional
workdir: /var/lib/ptm                  # clone, state, outbox
poll_interval: 30                      # seconds
policy:
  allowed_images: ["myconsortium/.*:.*"]          # full-match regexes, or name@sha256:… digests
  require_digest: false
  require_signed_tasks: true
  allowed_signers: /etc/ptm/allowed_signers       # git's SSH allowed-signers format
  trusted_submitters: [alice@uni.example]         # principals from that file
  approval: auto                                  # or manual
  release: auto                                   # or manual
limits:
  timeout: 3600
  memory: 2g
  cpus: 2
  pids: 256
  output_bytes: 104857600
  output_files: 1000
  max_parallel: 2
runtime:
  docker_host: unix:///var/run/docker.sock        # optional; DOCKER_HOST otherwise
  pull: always                                    # or if-missing, never
  network: none                                   # or a network this site controls
environment:
  SPARQL_ENDPOINT: http://sparql.internal:8890/sparql
mounts:
  - {source: /srv/data, target: /data}            # always read-only
signing_key: /etc/ptm/site_key                    # signs result commits (optional)
sftp_targets:
  ttp: {host: ttp.example.org, port: 22, user: hospital-a, key: /etc/ptm/ttp_key,
        host_key: "ssh-ed25519 AAAA…", path: /incoming}
"""

DESIGN_STATUS_YAML = f"""\
ptm: 1
task: age-stats
site: hospital-a
state: completed              # see states below
reason: null                  # why, for rejected / failed / cancelled / crashed / timed_out
task_commit: {COMMIT}
submitted_by: alice@uni.example   # verified signer principal, when signatures are checked
image: myconsortium/age-stats:1.2
image_id: sha256:{SHA}
image_digest: myconsortium/age-stats@sha256:{SHA}
exit_code: 0
received_at: 2026-11-29T10:00:00Z
started_at: 2026-11-29T10:00:01Z
finished_at: 2026-11-29T10:00:09Z
outputs:                      # what was collected (or delivered), with checksums
  - {{path: output/summary.csv, bytes: 120, sha256: {SHA}}}
agent: ptm 0.1.0
"""

DESIGN_REGISTRY_YAML = "ptm: 1\nname: Consortium registry\ndescription: Age studies\n"
DESIGN_CANCEL_YAML = "ptm: 1\nreason: wrong column\nrequested_by: alice@uni.example\n"
SITE_ENTRY_YAML = """\
ptm: 1
name: hospital-a
contact: research-it@hospital-a.example
principal: ptm-agent@hospital-a
public_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr5uE2dOI3p/8WdtT2iG4M0IzH8lt0kfKmV9qqmx0sF x
description: University hospital A
"""

EXAMPLES = {
    "task": DESIGN_TASK_YAML,
    "site": DESIGN_SITE_YAML,
    "status": DESIGN_STATUS_YAML,
    "registry": DESIGN_REGISTRY_YAML,
    "cancel": DESIGN_CANCEL_YAML,
    "site-entry": SITE_ENTRY_YAML,
}


def example(schema: str) -> dict[str, Any]:
    return load_yaml_text(EXAMPLES[schema], source=f"{schema}.yaml")


# -- the corpus of hostile documents ------------------------------------------------------------


def corpus() -> Iterator[Path]:
    return iter(sorted(BAD_INPUT.glob("*.yaml")))


def expectation(path: Path) -> tuple[str, str, str]:
    """The first line of every corpus file: ``# expect: <schema> | <field path> | <rule>``."""
    header = path.read_bytes().split(b"\n", 1)[0].decode("ascii")
    schema, where, rule = (part.strip() for part in header.removeprefix("# expect:").split("|"))
    return schema, where, rule


@pytest.mark.parametrize("path", list(corpus()), ids=lambda path: path.stem)
def test_hostile_document_is_refused_naming_file_field_and_rule(path: Path) -> None:
    schema, where, rule = expectation(path)
    source = f"bad_input/{path.name}"
    with pytest.raises(InvalidDocument) as caught:
        load_document(path, schema, source=source)
    problems = caught.value.problems
    assert [(p.source, p.path, p.rule) for p in problems] == [(source, where, rule)]
    text = str(caught.value)
    assert text.startswith(f"{source}: {where}: ") and text.endswith(f" [{rule}]")
    assert "\n" not in text and len(text) < 400


def test_corpus_covers_every_kind_of_hostile_input() -> None:
    rules = {expectation(path)[2] for path in corpus()}
    assert {
        *("yaml-alias", "yaml-tag", "duplicate-key", "merge-key", "multi-document", "type"),
        *("utf-8", "yaml-character", "key-type", "yaml-number", "max-depth", "yaml-syntax"),
    } <= rules
    assert {expectation(path)[0] for path in corpus()} == set(SCHEMA_NAMES)


# -- every rule of every schema -----------------------------------------------------------------

DELETE = object()
WHOLE = ()
Case = tuple[str, tuple[Any, ...], Any, str, str]

TASK_CASES: list[Case] = [
    ("task", WHOLE, ["a list"], "(top level)", "type"),
    ("task", ("imgae",), "busybox", "(top level)", "additionalProperties"),
    ("task", ("image",), DELETE, "(top level)", "required"),
    ("task", ("ptm",), 2, "ptm", "const"),
    ("task", ("image",), 5, "image", "type"),
    ("task", ("image",), "a" * 401, "image", "maxLength"),
    ("task", ("image",), "Busybox", "image", "pattern"),
    ("task", ("sites",), "hospital-a", "sites", "type"),
    ("task", ("sites",), [], "sites", "minItems"),
    ("task", ("sites",), [f"s{i}" for i in range(1001)], "sites", "maxItems"),
    ("task", ("sites",), ["a", "a"], "sites", "uniqueItems"),
    ("task", ("sites",), ["*", "a"], "sites", "maxItems"),
    ("task", ("sites",), [1], "sites[0]", "type"),
    ("task", ("sites",), ["a", "A"], "sites[1]", "pattern"),
    ("task", ("command",), "sh run.sh", "command", "type"),
    ("task", ("command",), [], "command", "minItems"),
    ("task", ("command",), ["x"] * 257, "command", "maxItems"),
    ("task", ("command",), ["sleep", 1], "command[1]", "type"),
    ("task", ("command",), ["x" * 4097], "command[0]", "maxLength"),
    ("task", ("command",), ["a\0b"], "command[0]", "pattern"),
    ("task", ("config",), ["column"], "config", "type"),
    ("task", ("timeout",), "600", "timeout", "type"),
    ("task", ("timeout",), 0, "timeout", "minimum"),
    ("task", ("timeout",), 604801, "timeout", "maximum"),
    ("task", ("resources",), "512m", "resources", "type"),
    ("task", ("resources", "gpus"), 1, "resources", "additionalProperties"),
    ("task", ("resources", "memory"), 512, "resources.memory", "type"),
    ("task", ("resources", "memory"), "512x", "resources.memory", "pattern"),
    ("task", ("resources", "cpus"), "1", "resources.cpus", "type"),
    ("task", ("resources", "cpus"), 0, "resources.cpus", "minimum"),
    ("task", ("resources", "cpus"), 1e-10, "resources.cpus", "minimum"),
    ("task", ("resources", "cpus"), 256.5, "resources.cpus", "maximum"),
    ("task", ("deliver",), "ttp", "deliver", "type"),
    ("task", ("deliver", "http"), "x", "deliver", "additionalProperties"),
    ("task", ("deliver", "sftp"), DELETE, "deliver", "required"),
    ("task", ("deliver", "sftp"), 1, "deliver.sftp", "type"),
    ("task", ("deliver", "sftp"), "../ttp", "deliver.sftp", "pattern"),
    ("task", ("encrypt",), "yes", "encrypt", "type"),
    ("task", ("description",), 1, "description", "type"),
    ("task", ("description",), "x" * 2001, "description", "maxLength"),
]

SLURM = {"shared_dir": "/shared/ptm"}
TARGET = {"host": "h", "user": "u", "key": "k", "host_key": "ssh-ed25519 AAAA"}
SITE_CASES: list[Case] = [
    ("site", WHOLE, [], "(top level)", "type"),
    ("site", ("polcy",), {}, "(top level)", "additionalProperties"),
    ("site", ("site",), DELETE, "(top level)", "required"),
    ("site", ("ptm",), 2, "ptm", "const"),
    ("site", ("site",), 1, "site", "type"),
    ("site", ("site",), "Hospital-A", "site", "pattern"),
    ("site", ("workdir",), 1, "workdir", "type"),
    ("site", ("workdir",), "", "workdir", "minLength"),
    ("site", ("workdir",), "/" + "a" * 4096, "workdir", "maxLength"),
    ("site", ("workdir",), "/var/lib/ptm\n", "workdir", "pattern"),
    ("site", ("registry",), "ssh://x", "registry", "type"),
    ("site", ("registry", "uri"), "x", "registry", "additionalProperties"),
    ("site", ("registry", "url"), DELETE, "registry", "required"),
    ("site", ("registry", "url"), 1, "registry.url", "type"),
    ("site", ("registry", "url"), "", "registry.url", "minLength"),
    ("site", ("registry", "url"), "a" * 4097, "registry.url", "maxLength"),
    ("site", ("registry", "url"), "--upload-pack=x", "registry.url", "pattern"),
    ("site", ("registry", "branch"), 1, "registry.branch", "type"),
    ("site", ("registry", "branch"), "-main", "registry.branch", "pattern"),
    ("site", ("poll_interval",), "30", "poll_interval", "type"),
    ("site", ("poll_interval",), 0, "poll_interval", "minimum"),
    ("site", ("poll_interval",), 86401, "poll_interval", "maximum"),
    ("site", ("policy",), [], "policy", "type"),
    ("site", ("policy", "trusted"), [], "policy", "additionalProperties"),
    ("site", ("policy", "allowed_images"), ".*", "policy.allowed_images", "type"),
    ("site", ("policy", "allowed_images"), [1], "policy.allowed_images[0]", "type"),
    ("site", ("policy", "allowed_images"), [""], "policy.allowed_images[0]", "minLength"),
    ("site", ("policy", "allowed_images"), ["a" * 1001], "policy.allowed_images[0]", "maxLength"),
    ("site", ("policy", "require_digest"), "no", "policy.require_digest", "type"),
    ("site", ("policy", "require_signed_tasks"), 0, "policy.require_signed_tasks", "type"),
    ("site", ("policy", "trusted_submitters"), "a@b", "policy.trusted_submitters", "type"),
    (
        "site",
        ("policy", "trusted_submitters"),
        ["a", "a"],
        "policy.trusted_submitters",
        "uniqueItems",
    ),
    ("site", ("policy", "trusted_submitters"), [1], "policy.trusted_submitters[0]", "type"),
    ("site", ("policy", "trusted_submitters"), ["a b"], "policy.trusted_submitters[0]", "pattern"),
    ("site", ("policy", "trusted_cancellers"), "a@b", "policy.trusted_cancellers", "type"),
    (
        "site",
        ("policy", "trusted_cancellers"),
        ["a", "a"],
        "policy.trusted_cancellers",
        "uniqueItems",
    ),
    ("site", ("policy", "trusted_cancellers"), [1], "policy.trusted_cancellers[0]", "type"),
    ("site", ("policy", "trusted_cancellers"), ["a b"], "policy.trusted_cancellers[0]", "pattern"),
    ("site", ("policy", "approval"), "yes", "policy.approval", "enum"),
    ("site", ("policy", "release"), "later", "policy.release", "enum"),
    ("site", ("limits",), 1, "limits", "type"),
    ("site", ("limits", "gpus"), 1, "limits", "additionalProperties"),
    ("site", ("limits", "timeout"), "1h", "limits.timeout", "type"),
    ("site", ("limits", "timeout"), 0, "limits.timeout", "minimum"),
    ("site", ("limits", "timeout"), 604801, "limits.timeout", "maximum"),
    ("site", ("limits", "memory"), 2, "limits.memory", "type"),
    ("site", ("limits", "memory"), "2 GB", "limits.memory", "pattern"),
    ("site", ("limits", "cpus"), "2", "limits.cpus", "type"),
    ("site", ("limits", "cpus"), 0, "limits.cpus", "exclusiveMinimum"),
    ("site", ("limits", "cpus"), 257, "limits.cpus", "maximum"),
    ("site", ("limits", "pids"), 2.5, "limits.pids", "type"),
    ("site", ("limits", "output_files"), 0, "limits.output_files", "minimum"),
    ("site", ("runtime",), "docker", "runtime", "type"),
    ("site", ("runtime", "privileged"), True, "runtime", "additionalProperties"),
    ("site", ("runtime", "docker_host"), 1, "runtime.docker_host", "type"),
    ("site", ("runtime", "docker_host"), "/var/run/docker.sock", "runtime.docker_host", "pattern"),
    ("site", ("runtime", "pull"), "maybe", "runtime.pull", "enum"),
    ("site", ("runtime", "network"), 1, "runtime.network", "type"),
    ("site", ("runtime", "network"), "container:db", "runtime.network", "pattern"),
    ("site", ("runtime", "user"), 0, "runtime.user", "type"),
    ("site", ("runtime", "user"), "root", "runtime.user", "pattern"),
    ("site", ("runtime", "allow_root"), "yes", "runtime.allow_root", "type"),
    ("site", ("runtime", "engine"), "kubernetes", "runtime.engine", "enum"),
    ("site", ("runtime", "podman"), "unix:///p.sock", "runtime.podman", "type"),
    ("site", ("runtime", "podman"), {"root": "/x"}, "runtime.podman", "additionalProperties"),
    ("site", ("runtime", "podman"), {"socket": 1}, "runtime.podman.socket", "type"),
    ("site", ("runtime", "podman"), {"socket": "/p.sock"}, "runtime.podman.socket", "pattern"),
    ("site", ("runtime", "slurm"), "/shared", "runtime.slurm", "type"),
    ("site", ("runtime", "slurm"), {}, "runtime.slurm", "required"),
    ("site", ("runtime", "slurm"), {**SLURM, "qos": "x"}, "runtime.slurm", "additionalProperties"),
    ("site", ("runtime", "slurm"), {**SLURM, "partition": 1}, "runtime.slurm.partition", "type"),
    (
        "site",
        ("runtime", "slurm"),
        {**SLURM, "partition": "a b"},
        "runtime.slurm.partition",
        "pattern",
    ),
    ("site", ("runtime", "slurm"), {**SLURM, "account": 1}, "runtime.slurm.account", "type"),
    ("site", ("runtime", "slurm"), {**SLURM, "account": "a;b"}, "runtime.slurm.account", "pattern"),
    (
        "site",
        ("runtime", "slurm"),
        {**SLURM, "sbatch_options": "--qos=x"},
        "runtime.slurm.sbatch_options",
        "type",
    ),
    (
        "site",
        ("runtime", "slurm"),
        {**SLURM, "sbatch_options": [1]},
        "runtime.slurm.sbatch_options[0]",
        "type",
    ),
    (
        "site",
        ("runtime", "slurm"),
        {**SLURM, "sbatch_options": ["--x=" + "a" * 1021]},
        "runtime.slurm.sbatch_options[0]",
        "maxLength",
    ),
    (
        "site",
        ("runtime", "slurm"),
        {**SLURM, "sbatch_options": ["-p x"]},
        "runtime.slurm.sbatch_options[0]",
        "pattern",
    ),
    (
        "site",
        ("runtime", "slurm"),
        {**SLURM, "node_engine": "singularity"},
        "runtime.slurm.node_engine",
        "enum",
    ),
    (
        "site",
        ("runtime", "slurm"),
        {**SLURM, "node_engine_options": "--root"},
        "runtime.slurm.node_engine_options",
        "type",
    ),
    (
        "site",
        ("runtime", "slurm"),
        {**SLURM, "node_engine_options": [1]},
        "runtime.slurm.node_engine_options[0]",
        "type",
    ),
    (
        "site",
        ("runtime", "slurm"),
        {**SLURM, "node_engine_options": ["a" * 4097]},
        "runtime.slurm.node_engine_options[0]",
        "maxLength",
    ),
    (
        "site",
        ("runtime", "slurm"),
        {**SLURM, "node_engine_options": ["a\nb"]},
        "runtime.slurm.node_engine_options[0]",
        "pattern",
    ),
    ("site", ("environment",), ["A=1"], "environment", "type"),
    ("site", ("environment", "A" * 257), "x", "environment", "maxLength"),
    ("site", ("environment", "PTM_TASK_ID"), "x", "environment", "pattern"),
    ("site", ("environment", "PORT"), 8890, "environment.PORT", "type"),
    ("site", ("environment", "BIG"), "x" * 65537, "environment.BIG", "maxLength"),
    ("site", ("environment", "NUL"), "a\0b", "environment.NUL", "pattern"),
    ("site", ("mounts",), "/srv/data:/data", "mounts", "type"),
    ("site", ("mounts",), ["/srv/data:/data"], "mounts[0]", "type"),
    ("site", ("mounts", 0, "mode"), "rw", "mounts[0]", "additionalProperties"),
    ("site", ("mounts", 0, "target"), DELETE, "mounts[0]", "required"),
    ("site", ("mounts", 0, "target"), 1, "mounts[0].target", "type"),
    ("site", ("mounts", 0, "target"), "/" + "a" * 4096, "mounts[0].target", "maxLength"),
    ("site", ("mounts", 0, "target"), "data", "mounts[0].target", "pattern"),
    ("site", ("sftp_targets",), [], "sftp_targets", "type"),
    ("site", ("sftp_targets", "TTP"), TARGET, "sftp_targets", "pattern"),
    ("site", ("sftp_targets", "ttp"), "ttp.example.org", "sftp_targets.ttp", "type"),
    ("site", ("sftp_targets", "ttp", "pw"), "x", "sftp_targets.ttp", "additionalProperties"),
    ("site", ("sftp_targets", "ttp", "host"), DELETE, "sftp_targets.ttp", "required"),
    ("site", ("sftp_targets", "ttp", "host"), 1, "sftp_targets.ttp.host", "type"),
    (
        "site",
        ("sftp_targets", "ttp", "host"),
        "-oProxyCommand=x",
        "sftp_targets.ttp.host",
        "pattern",
    ),
    ("site", ("sftp_targets", "ttp", "port"), "22", "sftp_targets.ttp.port", "type"),
    ("site", ("sftp_targets", "ttp", "port"), 0, "sftp_targets.ttp.port", "minimum"),
    ("site", ("sftp_targets", "ttp", "port"), 65536, "sftp_targets.ttp.port", "maximum"),
    ("site", ("sftp_targets", "ttp", "user"), 1, "sftp_targets.ttp.user", "type"),
    ("site", ("sftp_targets", "ttp", "user"), "a b", "sftp_targets.ttp.user", "pattern"),
    ("site", ("sftp_targets", "ttp", "host_key"), 1, "sftp_targets.ttp.host_key", "type"),
    (
        "site",
        ("sftp_targets", "ttp", "host_key"),
        "k " * 8200,
        "sftp_targets.ttp.host_key",
        "maxLength",
    ),
    ("site", ("sftp_targets", "ttp", "host_key"), "AAAA", "sftp_targets.ttp.host_key", "pattern"),
    ("site", ("sftp_targets", "ttp", "path"), 1, "sftp_targets.ttp.path", "type"),
    ("site", ("sftp_targets", "ttp", "path"), "", "sftp_targets.ttp.path", "minLength"),
    ("site", ("sftp_targets", "ttp", "path"), "/" * 4097, "sftp_targets.ttp.path", "maxLength"),
    ("site", ("sftp_targets", "ttp", "path"), "/in\ncoming", "sftp_targets.ttp.path", "pattern"),
    ("site", ("policy", "require_encryption"), "yes", "policy.require_encryption", "type"),
    ("site", ("policy", "encrypt_to"), "ssh-ed25519 A", "policy.encrypt_to", "type"),
    ("site", ("policy", "encrypt_to"), ["k", "k"], "policy.encrypt_to", "uniqueItems"),
    (
        "site",
        ("policy", "encrypt_to"),
        [f"k{i}" for i in range(101)],
        "policy.encrypt_to",
        "maxItems",
    ),
    ("site", ("policy", "encrypt_to"), [1], "policy.encrypt_to[0]", "type"),
    ("site", ("policy", "encrypt_to"), [""], "policy.encrypt_to[0]", "minLength"),
    ("site", ("policy", "encrypt_to"), ["k" * 16385], "policy.encrypt_to[0]", "maxLength"),
    ("site", ("policy", "encrypt_to"), ["k\nk"], "policy.encrypt_to[0]", "pattern"),
    ("site", ("sftp_targets", "ttp", "encrypt_to"), "k", "sftp_targets.ttp.encrypt_to", "type"),
]

STATUS_CASES: list[Case] = [
    ("status", WHOLE, "completed", "(top level)", "type"),
    ("status", ("status",), "x", "(top level)", "additionalProperties"),
    ("status", ("task_commit",), DELETE, "(top level)", "required"),
    ("status", ("ptm",), "1", "ptm", "const"),
    ("status", ("task",), None, "task", "type"),
    ("status", ("site",), "../x", "site", "pattern"),
    ("status", ("state",), "done", "state", "enum"),
    ("status", ("reason",), 1, "reason", "type"),
    ("status", ("reason",), "x" * 10001, "reason", "maxLength"),
    ("status", ("task_commit",), 1, "task_commit", "type"),
    ("status", ("task_commit",), COMMIT[:7], "task_commit", "pattern"),
    ("status", ("image_id",), 1, "image_id", "type"),
    ("status", ("image_id",), SHA, "image_id", "pattern"),
    ("status", ("image_digest",), 1, "image_digest", "type"),
    ("status", ("image_digest",), "a" * 330 + "@sha256:" + SHA, "image_digest", "maxLength"),
    ("status", ("image_digest",), "busybox:1", "image_digest", "pattern"),
    ("status", ("exit_code",), "0", "exit_code", "type"),
    ("status", ("received_at",), None, "received_at", "type"),
    ("status", ("received_at",), "2026-11-29 10:00:00", "received_at", "pattern"),
    ("status", ("started_at",), 1, "started_at", "type"),
    ("status", ("finished_at",), "2026-13-29T10:00:00Z", "finished_at", "pattern"),
    ("status", ("outputs",), "output/summary.csv", "outputs", "type"),
    ("status", ("outputs",), ["output/summary.csv"], "outputs[0]", "type"),
    ("status", ("outputs", 0, "mode"), 644, "outputs[0]", "additionalProperties"),
    ("status", ("outputs", 0, "sha256"), DELETE, "outputs[0]", "required"),
    ("status", ("outputs", 0, "path"), 1, "outputs[0].path", "type"),
    ("status", ("outputs", 0, "path"), "a" * 4097, "outputs[0].path", "maxLength"),
    ("status", ("outputs", 0, "path"), "output/../../x", "outputs[0].path", "pattern"),
    ("status", ("outputs", 0, "bytes"), "120", "outputs[0].bytes", "type"),
    ("status", ("outputs", 0, "bytes"), -1, "outputs[0].bytes", "minimum"),
    ("status", ("outputs", 0, "sha256"), 1, "outputs[0].sha256", "type"),
    ("status", ("outputs", 0, "sha256"), SHA.upper(), "outputs[0].sha256", "pattern"),
    ("status", ("skipped",), "x", "skipped", "type"),
    ("status", ("skipped",), ["x"], "skipped[0]", "type"),
    (
        "status",
        ("skipped",),
        [{"path": "x", "reason": "y", "z": 1}],
        "skipped[0]",
        "additionalProperties",
    ),
    ("status", ("skipped",), [{"path": "x"}], "skipped[0]", "required"),
    ("status", ("skipped",), [{"path": 1, "reason": "y"}], "skipped[0].path", "type"),
    ("status", ("skipped",), [{"path": "x" * 4097, "reason": "y"}], "skipped[0].path", "maxLength"),
    ("status", ("skipped",), [{"path": "x", "reason": 1}], "skipped[0].reason", "type"),
    (
        "status",
        ("skipped",),
        [{"path": "x", "reason": "y" * 1001}],
        "skipped[0].reason",
        "maxLength",
    ),
    ("status", ("encrypted_to",), "SHA256:x", "encrypted_to", "type"),
    ("status", ("encrypted_to",), ["SHA256:" + "A" * 43] * 101, "encrypted_to", "maxItems"),
    ("status", ("encrypted_to",), [1], "encrypted_to[0]", "type"),
    ("status", ("encrypted_to",), ["MD5:" + "a" * 32], "encrypted_to[0]", "pattern"),
    ("status", ("output_count",), "1", "output_count", "type"),
    ("status", ("output_count",), -1, "output_count", "minimum"),
    ("status", ("output_bytes",), 1.5, "output_bytes", "type"),
    ("status", ("output_bytes",), -1, "output_bytes", "minimum"),
    ("status", ("agent",), 1, "agent", "type"),
    ("status", ("agent",), "x" * 201, "agent", "maxLength"),
]

REGISTRY_CASES: list[Case] = [
    ("registry", WHOLE, [], "(top level)", "type"),
    ("registry", ("tasks",), "tasks", "(top level)", "additionalProperties"),
    ("registry", ("name",), DELETE, "(top level)", "required"),
    ("registry", ("ptm",), 0, "ptm", "const"),
    ("registry", ("name",), 1, "name", "type"),
    ("registry", ("name",), "", "name", "minLength"),
    ("registry", ("name",), "x" * 201, "name", "maxLength"),
    ("registry", ("name",), "a\tb", "name", "pattern"),
    ("registry", ("description",), [], "description", "type"),
    ("registry", ("description",), "x" * 2001, "description", "maxLength"),
    ("registry", ("tasks_branch",), 1, "tasks_branch", "type"),
    ("registry", ("tasks_branch",), "main/", "tasks_branch", "pattern"),
    ("registry", ("require_signed_tasks",), "yes", "require_signed_tasks", "type"),
]

SITE_ENTRY_CASES: list[Case] = [
    ("site-entry", WHOLE, "hospital-a", "(top level)", "type"),
    ("site-entry", ("key",), "x", "(top level)", "additionalProperties"),
    ("site-entry", ("name",), DELETE, "(top level)", "required"),
    ("site-entry", ("ptm",), 2, "ptm", "const"),
    ("site-entry", ("name",), 1, "name", "type"),
    ("site-entry", ("name",), "Hospital A", "name", "pattern"),
    ("site-entry", ("contact",), 1, "contact", "type"),
    ("site-entry", ("contact",), "x" * 401, "contact", "maxLength"),
    ("site-entry", ("contact",), "a\x1b[2Jb", "contact", "pattern"),
    ("site-entry", ("principal",), 1, "principal", "type"),
    ("site-entry", ("principal",), "x" * 201, "principal", "maxLength"),
    ("site-entry", ("principal",), 'a" b', "principal", "pattern"),
    ("site-entry", ("public_key",), 1, "public_key", "type"),
    ("site-entry", ("public_key",), "ssh-ed25519 " + "A" * 16384, "public_key", "maxLength"),
    ("site-entry", ("public_key",), "ssh-dss AAAA", "public_key", "pattern"),
    ("site-entry", ("description",), [], "description", "type"),
    ("site-entry", ("description",), "x" * 2001, "description", "maxLength"),
]

CANCEL_CASES: list[Case] = [
    ("cancel", WHOLE, "stop", "(top level)", "type"),
    ("cancel", ("force",), True, "(top level)", "additionalProperties"),
    ("cancel", ("reason",), DELETE, "(top level)", "required"),
    ("cancel", ("ptm",), 2, "ptm", "const"),
    ("cancel", ("reason",), 1, "reason", "type"),
    ("cancel", ("reason",), "", "reason", "minLength"),
    ("cancel", ("reason",), "x" * 2001, "reason", "maxLength"),
    ("cancel", ("requested_by",), 1, "requested_by", "type"),
    ("cancel", ("requested_by",), "", "requested_by", "minLength"),
    ("cancel", ("requested_by",), "x" * 201, "requested_by", "maxLength"),
]

RULE_CASES = TASK_CASES + SITE_CASES + STATUS_CASES + REGISTRY_CASES + CANCEL_CASES
RULE_CASES += SITE_ENTRY_CASES


def mutated(schema: str, where: tuple[Any, ...], value: Any) -> Any:
    if where == WHOLE:
        return value
    document = copy.deepcopy(example(schema))
    parent = document
    for key in where[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[where[-1]]
    else:
        parent[where[-1]] = value
    return document


def case_id(case: Case) -> str:
    schema, _, _, path, rule = case
    return f"{schema}:{path}:{rule}"


@pytest.mark.parametrize("case", RULE_CASES, ids=[case_id(case) for case in RULE_CASES])
def test_each_schema_rule_refuses_a_document(case: Case) -> None:
    schema, where, value, path, rule = case
    problems = problems_in(mutated(schema, where, value), schema, source="doc.yaml")
    assert [(p.source, p.path, p.rule) for p in problems] == [("doc.yaml", path, rule)]


@pytest.mark.parametrize("schema", SCHEMA_NAMES)
def test_every_rule_of_the_schema_has_a_failing_case(schema: str) -> None:
    broken: set[tuple[int, str]] = set()
    validator = Draft202012Validator(load_schema(schema))
    documents = [mutated(*case[:3]) for case in RULE_CASES if case[0] == schema]
    documents += [load_yaml_text(p.read_bytes(), source=p.name) for p in _loadable(schema)]
    for document in documents:
        broken |= {(id(e.schema), str(e.validator)) for e in validator.iter_errors(document)}
    missing = [
        f"{path} {keyword}"
        for path, node, keyword in _rules(load_schema(schema))
        if (id(node), keyword) not in broken
    ]
    assert missing == []


def _loadable(schema: str) -> list[Path]:
    found = []
    for path in corpus():
        if expectation(path)[0] == schema:
            try:
                load_yaml_text(path.read_bytes(), source=path.name)
            except InvalidDocument:
                continue
            found.append(path)
    return found


_KEYWORDS = {
    *("type", "enum", "const", "pattern", "minLength", "maxLength", "minimum", "maximum"),
    *("exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems", "uniqueItems", "required"),
    *("additionalProperties", "minProperties", "maxProperties"),
}


def _rules(node: Any, path: str = "#") -> Iterator[tuple[str, Any, str]]:
    """Every (location, subschema, keyword) that can refuse a document; ``if`` only selects."""
    if not isinstance(node, dict):
        return
    for keyword, value in node.items():
        if keyword in _KEYWORDS and not (keyword == "additionalProperties" and value is not False):
            yield path, node, keyword
    for keyword, value in node.items():
        if keyword in ("properties", "$defs"):
            for name, sub in value.items():
                yield from _rules(sub, f"{path}/{keyword}/{name}")
        elif keyword != "if" and isinstance(value, dict):
            yield from _rules(value, f"{path}/{keyword}")


# -- the schemas themselves ---------------------------------------------------------------------


@pytest.mark.parametrize("schema", SCHEMA_NAMES)
def test_schema_is_well_formed_and_documented(schema: str) -> None:
    document = load_schema(schema)
    Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"].endswith(f"/{schema}.schema.json") and document["title"]
    for path, node in _subschemas(document):
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
            for name, prop in node["properties"].items():
                assert prop.get("description"), f"{path}/properties/{name}"


def _subschemas(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if isinstance(value, dict):
                yield from _subschemas(value, f"{path}/{key}")


@pytest.mark.parametrize("schema", SCHEMA_NAMES)
def test_design_example_is_valid(schema: str) -> None:
    assert problems_in(example(schema), schema, source=f"{schema}.yaml") == []


@pytest.mark.parametrize("schema", SCHEMA_NAMES)
def test_no_pattern_accepts_a_trailing_newline(schema: str) -> None:
    text = (Path(__file__).parents[1] / "schemas" / f"{schema}.schema.json").read_text()
    for pattern in re.findall(r'"pattern": "(.*)"', text):
        assert pattern.endswith("(?!\\\\n)$") or pattern.endswith("*$"), pattern


def test_unknown_schema_name_is_a_bug() -> None:
    with pytest.raises(ValueError, match="unknown schema"):
        problems_in({}, "tasks", source="x")


# -- messages -----------------------------------------------------------------------------------


def test_all_problems_are_reported_sorted_by_path_with_readable_messages() -> None:
    document = example("task")
    document.update(imgae="busybox", timeout=0, sites=["a", "../x"])
    document["resources"]["memory"] = "lots"
    del document["image"]
    problems = problems_in(document, "task", source="tasks/t/task.yaml")
    assert [str(p) for p in problems] == [
        "tasks/t/task.yaml: (top level): unknown key 'imgae' (did you mean 'image'?) "
        "[additionalProperties]",
        "tasks/t/task.yaml: (top level): missing required key 'image' [required]",
        "tasks/t/task.yaml: resources.memory: 'lots': use a number with an optional unit k, m "
        "or g, like 512m [pattern]",
        "tasks/t/task.yaml: sites[1]: '../x': use a site name like hospital-a (a-z, 0-9, '.', "
        "'_', '-'; at most 63, the first a letter or digit), or '*' for every site [pattern]",
        "tasks/t/task.yaml: timeout: must be at least 1, found 0 [minimum]",
    ]


@pytest.mark.parametrize(
    ("schema", "where", "value", "message"),
    [
        ("task", ("timeout",), "600", "must be a whole number, found the text '600'"),
        ("task", ("config",), None, "must be a mapping, found null"),
        ("task", ("sites",), ["*", "a"], "'*' (every site) must be the only entry"),
        ("task", ("sites",), ["a", "b", "a"], "'a' is listed more than once"),
        ("task", ("sites",), [], "must not be empty"),
        ("task", ("ptm",), 2, "must be 1, found 2"),
        ("task", ("resources", "cpus"), 0, "must be at least 0.01, found 0"),
        ("task", ("description",), "x" * 2001, "is 2001 characters long; at most 2000 allowed"),
        ("site", ("policy", "approval"), "yes", "'yes' is not one of 'auto', 'manual'"),
        ("site", ("environment", "PTM_X"), "1", "key 'PTM_X': use a variable name of A-Z"),
        ("task", ("resources", "memory"), "1GB", "'1GB': use a number with an optional unit k"),
        ("site", ("limits", "memory"), "2 GB", "'2 GB': use a number with an optional unit k"),
        ("task", ("timeout",), 604801, "must be at most 604800 seconds (7 days), found 604801"),
        ("site", ("poll_interval",), 86401, "must be at most 86400 seconds (1 day), found 86401"),
        ("site", ("site",), "Hospital-A", "'Hospital-A': use a name like hospital-a (a-z, 0-9"),
        ("registry", ("tasks_branch",), "main/", "'main/': use a branch name of up to 100"),
        ("status", ("received_at",), "2026-11-29 10:00", "'2026-11-29 10:00': use a UTC time"),
        ("site", ("sftp_targets", "ttp", "host"), DELETE, "missing required key 'host'"),
        ("status", ("exit_code",), True, "must be a whole number or null, found a boolean (true)"),
    ],
)
def test_message_wording(schema: str, where: tuple[Any, ...], value: Any, message: str) -> None:
    (problem,) = problems_in(mutated(schema, where, value), schema, source="doc.yaml")
    assert problem.message.startswith(message)


@pytest.mark.parametrize("schema", SCHEMA_NAMES)
def test_every_pattern_is_explained_in_words(schema: str) -> None:
    unexplained = [
        f"{path}: {node['pattern']}"
        for path, node in _subschemas(load_schema(schema))
        if "pattern" in node
        and node["pattern"] not in ACCEPTED_FORMS
        and not node.get("description")
    ]
    assert unexplained == []


def test_human_units() -> None:
    assert human_bytes(104857600) == "100 MiB" and human_bytes(1536) == "1.5 KiB"
    assert human_bytes(1073741824) == "1 GiB" and human_bytes(10) == "10 bytes"
    assert human_seconds(604800) == "7 days" and human_seconds(5400) == "1.5 hours"
    assert human_seconds(60) == "1 minute" and human_seconds(1) == "1 second"


def test_long_hostile_values_are_cut_in_messages() -> None:
    (problem,) = problems_in(mutated("task", ("sites",), ["A\x1b" * 150]), "task", source="t")
    assert problem.message.startswith("'A\\x1bA") and "\x1b" not in problem.message
    value, _, explanation = problem.message.partition(": use ")
    assert len(value) <= 80 and explanation.startswith("a site name like hospital-a")


def test_long_patterns_are_explained_by_their_description() -> None:
    (problem,) = problems_in(mutated("task", ("image",), "Busybox"), "task", source="t")
    assert problem.message == (
        "'Busybox' does not have the expected form: Docker image reference, "
        "[registry/]name[:tag][@sha256:<64 hex>]; a digest pins the exact image."
    )


def test_paths_render_like_json_paths() -> None:
    assert render_path([]) == "(top level)"
    assert render_path(["resources", "memory"]) == "resources.memory"
    assert render_path(["sites", 1]) == "sites[1]"
    assert render_path(["environment", "a b\n"]) == "environment['a b\\n']"


# -- reading files ------------------------------------------------------------------------------


def test_oversized_file_is_refused_from_its_size_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    with path.open("wb") as stream:
        stream.truncate(10 * 1024 * 1024)  # sparse: 10 MiB of NUL that no parser may see
    with pytest.raises(InvalidDocument) as caught:
        load_yaml_file(path, source="tasks/big/task.yaml")
    # the size quoted is the file's, from stat: a read would have stopped at the limit + 1
    assert str(caught.value) == (
        f"tasks/big/task.yaml: (file): is {10 * 1024 * 1024} bytes (10 MiB) long; "
        f"at most {MAX_DOCUMENT_BYTES} bytes (1 MiB) are allowed [max-bytes]"
    )


def test_oversized_text_is_refused() -> None:
    with pytest.raises(InvalidDocument, match=r"\[max-bytes\]"):
        load_yaml_text("a: " + "x" * MAX_DOCUMENT_BYTES, source="x.yaml")
    with pytest.raises(InvalidDocument, match=r"\[max-bytes\]"):
        load_yaml_text("a: " + "é" * (MAX_DOCUMENT_BYTES // 2), source="x.yaml")
    assert load_yaml_text("a: 1", source="x.yaml", max_bytes=4) == {"a": 1}


def test_symlinked_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.yaml"
    real.write_text(DESIGN_TASK_YAML)
    link = tmp_path / "task.yaml"
    link.symlink_to(real)
    with pytest.raises(InvalidDocument) as caught:
        load_yaml_file(link, source="tasks/t/task.yaml")
    assert [(p.path, p.rule) for p in caught.value.problems] == [("(file)", "symlink")]


@pytest.mark.parametrize("kind", ["fifo", "folder", "missing"])
def test_only_existing_regular_files_are_read(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "task.yaml"
    if kind == "fifo":
        os.mkfifo(path)  # reading would block forever
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(InvalidDocument) as caught:
        load_yaml_file(path)
    rule = {"fifo": "regular-file", "folder": "regular-file", "missing": "exists"}[kind]
    assert [(p.source, p.rule) for p in caught.value.problems] == [(str(path), rule)]


def test_timestamps_and_dates_stay_text() -> None:
    document = load_yaml_text("a: 2026-11-29T10:00:00Z\nb: 2026-11-29\n", source="x")
    assert document == {"a": "2026-11-29T10:00:00Z", "b": "2026-11-29"}


def test_byte_order_mark_is_accepted() -> None:
    assert load_yaml_text("\ufeffa: 1\n".encode(), source="x") == {"a": 1}


def test_load_document_returns_the_valid_document(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text(DESIGN_TASK_YAML)
    assert load_document(path, "task")["resources"] == {"memory": "512m", "cpus": 1}


# -- writing ------------------------------------------------------------------------------------


def test_dump_yaml_keeps_order_and_unicode_and_never_writes_aliases() -> None:
    shared = {"x": [1, 2]}
    document = {"z": "Zürich", "a": shared, "b": shared, "t": MappingProxyType({"k": (1, "2")})}
    text = dump_yaml(document)
    assert "&" not in text and "*" not in text and "Zürich" in text
    assert list(load_yaml_text(text, source="x")) == ["z", "a", "b", "t"]
    assert load_yaml_text(text, source="x")["t"] == {"k": [1, "2"]}


@pytest.mark.parametrize("schema", SCHEMA_NAMES)
def test_examples_survive_a_dump_and_load(schema: str) -> None:
    document = example(schema)
    again = load_yaml_text(dump_yaml(document), source="x")
    assert again == document
    assert problems_in(again, schema, source="x") == []


def test_yaml_output_is_safe_yaml() -> None:
    assert yaml.safe_load(dump_yaml({"when": "2026-11-29T10:00:00Z"})) == {
        "when": "2026-11-29T10:00:00Z"
    }


def test_problem_is_the_shared_error_shape() -> None:
    problem = Problem("f.yaml", "a.b", "type", "must be text")
    assert str(problem) == "f.yaml: a.b: must be text [type]"
