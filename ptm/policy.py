"""May this site run this task, and if not, why. Pure: the agent and ``ptm policy explain``
both call ``decide`` with the same evidence, so they can never disagree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ptm.gitrepo import SignatureCheck
from ptm.schema import human_bytes, human_seconds
from ptm.signatures import commit_label
from ptm.siteconfig import SiteConfig
from ptm.task import Task


@dataclass(frozen=True)
class Evidence:
    """Facts about a task gathered from git: the signatures of every commit that touched it."""

    signatures: tuple[SignatureCheck, ...] = ()
    touched_after_acted: bool = False


@dataclass(frozen=True)
class Decision:
    """The verdict; ``reasons`` lists every rule broken, each naming the setting behind it."""

    for_this_site: bool
    reasons: tuple[str, ...]
    submitted_by: str | None
    needs_approval: bool

    @property
    def accepted(self) -> bool:
        return self.for_this_site and not self.reasons

    def summary(self) -> str:
        return "; ".join(self.reasons)


def decide(task: Task, site: SiteConfig, evidence: Evidence) -> Decision:
    if not task.targets(site.site):
        return Decision(
            False,
            (f"the task names sites {list(task.sites)}, not {site.site!r}",),
            None,
            needs_approval=False,
        )
    reasons = [
        *_image_reasons(task, site),
        *_limit_reasons(task, site),
        *_delivery_reasons(task, site),
    ]
    submitted_by = _submitter(evidence.signatures)
    if site.policy.require_signed_tasks:
        reasons += _signature_reasons(evidence.signatures, site.policy.trusted_submitters)
    return Decision(
        True, tuple(reasons), submitted_by, needs_approval=site.policy.approval == "manual"
    )


def _image_reasons(task: Task, site: SiteConfig) -> list[str]:
    reasons = []
    if not site.image_allowed(task.image):
        reasons.append(
            f"image {task.image!r} matches no entry of this site's allow-list "
            "(policy.allowed_images)"
        )
    if site.policy.require_digest and not task.is_pinned:
        reasons.append(
            f"image {task.image!r} is not pinned to a digest (name@sha256:…) and this site "
            "requires one (policy.require_digest)"
        )
    return reasons


def _limit_reasons(task: Task, site: SiteConfig) -> list[str]:
    limits = site.limits
    reasons = []
    if task.timeout is not None and task.timeout > limits.timeout:
        reasons.append(
            f"timeout {task.timeout}s ({human_seconds(task.timeout)}) is above this site's cap "
            f"of {limits.timeout}s ({human_seconds(limits.timeout)}) (limits.timeout)"
        )
    if task.memory_bytes is not None and task.memory_bytes > limits.memory_bytes:
        reasons.append(
            f"memory request of {human_bytes(task.memory_bytes)} is above this site's cap "
            f"of {human_bytes(limits.memory_bytes)} (limits.memory)"
        )
    if task.cpus is not None and task.cpus > limits.cpus:
        reasons.append(
            f"cpus request {task.cpus:g} is above this site's cap of {limits.cpus:g} (limits.cpus)"
        )
    return reasons


def _delivery_reasons(task: Task, site: SiteConfig) -> list[str]:
    if task.deliver_sftp is None or task.deliver_sftp in site.sftp_targets:
        return []
    return [
        f"delivery to SFTP target {task.deliver_sftp!r} is not configured at this site "
        "(sftp_targets)"
    ]


def _signature_reasons(checks: Sequence[SignatureCheck], trusted: Sequence[str]) -> list[str]:
    if not checks:
        return ["no commit for this task was found to verify (policy.require_signed_tasks)"]
    reasons = []
    for check in checks:
        where = commit_label(check)  # says so when it is a merge with content of its own
        if not check.good:
            reasons.append(f"{where}: {check.describe()} (policy.require_signed_tasks)")
        elif trusted and check.signer not in trusted:
            reasons.append(
                f"{where}: signed by {check.signer!r}, who is not a trusted "
                "submitter (policy.trusted_submitters)"
            )
    return reasons


def _submitter(checks: Sequence[SignatureCheck]) -> str | None:
    """The verified signer of the oldest commit (the one that added the task)."""
    if not checks:
        return None
    first = checks[-1]
    return first.signer if first.good else None
