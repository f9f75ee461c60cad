"""The agent pulling from a real image registry: the digest that ran is recorded, a pinned task
runs exactly its digest, and a site can demand digests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent_support import Researcher, remote_status, site_agent
from tests.fixtures_docker import ImageRegistry

pytestmark = pytest.mark.docker


def test_pull_always_records_the_registry_digest(
    bare_registry: Path, tmp_path: Path, image_registry: ImageRegistry
) -> None:
    pinned = image_registry.push("agent/tagged", tag="1")
    tagged = pinned.split("@")[0] + ":1"
    Researcher(bare_registry, tmp_path / "r").submit("pulled", "echo ok", image=tagged)
    allowed = {"allowed_images": [f"{image_registry.address}/agent/.*"]}
    agent = site_agent(
        tmp_path, "hospital-a", bare_registry, policy=allowed, runtime={"pull": "always"}
    )
    agent.once()
    status = remote_status(bare_registry, "pulled")
    assert status is not None and status["state"] == "completed", status
    assert status["image_digest"] == pinned
    assert status["image_id"].startswith("sha256:")


def test_a_pinned_task_runs_exactly_its_digest(
    bare_registry: Path, tmp_path: Path, image_registry: ImageRegistry
) -> None:
    pinned = image_registry.push("agent/pinned", tag="1")
    Researcher(bare_registry, tmp_path / "r").submit("exact", "echo ok", image=pinned)
    policy = {"allowed_images": [pinned], "require_digest": True}
    site_agent(
        tmp_path, "hospital-a", bare_registry, policy=policy, runtime={"pull": "if-missing"}
    ).once()
    status = remote_status(bare_registry, "exact")
    assert status is not None and status["state"] == "completed", status
    assert status["image_digest"] == pinned


def test_a_digest_the_registry_does_not_have_fails_without_running(
    bare_registry: Path, tmp_path: Path, image_registry: ImageRegistry
) -> None:
    pinned = image_registry.push("agent/missing", tag="1")
    absent = pinned.split("@")[0] + "@sha256:" + "0" * 64
    Researcher(bare_registry, tmp_path / "r").submit("absent", "echo ran", image=absent)
    policy = {"allowed_images": [f"{image_registry.address}/agent/.*"]}
    site_agent(
        tmp_path, "hospital-a", bare_registry, policy=policy, runtime={"pull": "always"}
    ).once()
    status = remote_status(bare_registry, "absent")
    assert status is not None and status["state"] == "failed"
    assert status["reason"].startswith("image:")
    assert status["started_at"] is None


def test_require_digest_rejects_a_tag(
    bare_registry: Path, tmp_path: Path, image_registry: ImageRegistry
) -> None:
    tagged = image_registry.push("agent/tag-only", tag="2").split("@")[0] + ":2"
    Researcher(bare_registry, tmp_path / "r").submit("by-tag", image=tagged)
    policy = {"allowed_images": [f"{image_registry.address}/agent/.*"], "require_digest": True}
    site_agent(tmp_path, "hospital-a", bare_registry, policy=policy).once()
    status = remote_status(bare_registry, "by-tag")
    assert status is not None and status["state"] == "rejected"
    assert "policy.require_digest" in status["reason"]
