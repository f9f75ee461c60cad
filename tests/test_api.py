"""The Python API (ptm.api.Registry) against a real bare registry and real result branches."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from ptm.api import Registry, WaitTimedOut, draft_from_mapping
from ptm.errors import PtmError
from ptm.federation import WAITING
from ptm.registry_cache import cache_clone_path
from ptm.submission import TaskDraft
from tests.fixtures_git import SigningKey, git, write_allowed_signers
from tests.test_status_cmd import SiteBranch, final_result


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "ptm" / "registries"


def test_open_a_clone_or_a_url(
    bare_registry: Path, registry_clone: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_clone = Registry.open(registry_clone / "tasks")
    assert from_clone.root == registry_clone.resolve() and from_clone.url is None
    assert from_clone.tasks_branch == "main"
    from_url = Registry.open(f"file://{bare_registry}")
    assert from_url.url == f"file://{bare_registry}"
    assert from_url.root == cache_clone_path(cache, f"file://{bare_registry}")
    assert from_url.root.name.startswith("registry-")
    from_bare_path = Registry.open(bare_registry)
    assert from_bare_path.url == str(bare_registry.resolve())
    monkeypatch.chdir(registry_clone)
    assert Registry.open().root == registry_clone.resolve()


def test_open_refuses_what_is_not_a_registry(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(PtmError, match="not inside a registry clone"):
        Registry.open(tmp_path)
    with pytest.raises(PtmError, match="git failed"):
        Registry.open("file:///nonexistent/registry.git")


def test_submit_status_wait_results(
    bare_registry: Path, cache: Path, alice: SigningKey, tmp_path: Path
) -> None:
    registry = Registry.open(f"file://{bare_registry}")
    submitted = registry.submit(
        {
            "task_id": "age",
            "image": "ptm-test/stats:1",
            "sites": ["hospital-a", "hospital-b"],
            "config": {"column": "age"},
        },
        sign_key=alice.private,
    )
    assert submitted.signed and submitted.branch == "main"
    signers = write_allowed_signers(tmp_path / "allowed", alice)
    assert (
        git(
            bare_registry,
            "-c",
            f"gpg.ssh.allowedSignersFile={signers}",
            "log",
            "-1",
            "--format=%G?",
            "main",
        )
        == "G"
    )

    status = registry.status("age")
    assert status.task is not None and status.task.config["column"] == "age"
    assert [(s.site, s.state) for s in status.sites] == [
        ("hospital-a", WAITING),
        ("hospital-b", WAITING),
    ]
    assert not status.is_done()

    SiteBranch(bare_registry, "hospital-a").put(final_result("age", "hospital-a"))
    SiteBranch(bare_registry, "hospital-b").report("age", "rejected", reason="no such image")
    done = registry.wait("age", timeout=30, poll_interval=0.1)
    assert done.is_done() and done.site("hospital-b") is not None

    collected = registry.results("age", tmp_path / "out")
    assert set(collected) == {"hospital-a", "hospital-b"}
    a = collected["hospital-a"]
    assert a.state == "completed" and a.output_files == ("summary.csv",)
    assert a.read_text("summary.csv") == "site,mean\nx,42\n"
    assert a.read_bytes("summary.csv").startswith(b"site,mean")
    assert a.log == "hello from the container\n"
    assert a.record is not None and a.record.exit_code == 0
    b = collected["hospital-b"]
    assert b.state == "rejected" and b.output_files == () and b.log is None
    assert b.record is not None and b.record.reason == "no such image"
    with pytest.raises(PtmError, match="no output file"):
        a.read_text("../status.yaml")


def test_wait_times_out_with_the_last_status(bare_registry: Path, registry_clone: Path) -> None:
    registry = Registry.open(registry_clone)
    registry.submit(TaskDraft("slow", "ptm-test/stats:1", ("hospital-a",)))
    SiteBranch(bare_registry, "hospital-a").report("slow", "running")
    seen: list[float] = []
    started = time.monotonic()
    with pytest.raises(WaitTimedOut) as caught:
        registry.wait(
            "slow",
            timeout=0.6,
            poll_interval=0.1,
            on_progress=lambda status, elapsed: seen.append(elapsed),
        )
    assert 0.6 <= time.monotonic() - started < 15
    assert caught.value.status.site("hospital-a") is not None
    assert "not finished at hospital-a (running)" in str(caught.value)
    assert len(seen) >= 2 and seen == sorted(seen)


def test_wait_sees_a_result_pushed_meanwhile(bare_registry: Path, registry_clone: Path) -> None:
    registry = Registry.open(registry_clone)
    registry.submit({"task_id": "later", "image": "ptm-test/stats:1", "sites": ["hospital-a"]})
    pusher = threading.Timer(
        0.8,
        lambda: SiteBranch(bare_registry, "hospital-a").put(final_result("later", "hospital-a")),
    )
    pusher.start()
    try:
        status = registry.wait("later", timeout=60, poll_interval=0.1)
    finally:
        pusher.join()
    site = status.site("hospital-a")
    assert site is not None and site.state == "completed"


def test_cancel_through_the_api(
    bare_registry: Path, registry_clone: Path, alice: SigningKey
) -> None:
    registry = Registry.open(registry_clone)
    registry.submit({"task_id": "c1", "image": "ptm-test/stats:1", "sites": "hospital-a"})
    cancelled = registry.cancel("c1", reason="oops", sign_key=alice.private)
    assert cancelled.signed and cancelled.task_id == "c1"
    assert git(bare_registry, "rev-parse", "main") == cancelled.commit
    status = registry.status("c1")
    assert status.cancellation is not None and status.cancellation.reason == "oops"
    with pytest.raises(PtmError, match="cancelled already"):
        registry.cancel("c1", reason="again")


def test_a_url_registry_has_no_work_tree(bare_registry: Path, cache: Path) -> None:
    registry = Registry.open(str(bare_registry))
    assert sorted(p.name for p in registry.root.iterdir()) == [".git"]
    (registry.root / "tasks" / "junk").mkdir(parents=True)
    (registry.root / "tasks" / "junk" / "task.yaml").write_text("left over\n")
    registry.submit({"task_id": "fresh", "image": "ptm-test/stats:1", "sites": ["s"]})
    assert git(bare_registry, "ls-tree", "--name-only", "main:tasks").split() == ["fresh"]
    assert [t.task_id for t in registry.overview().tasks] == ["fresh"]


def test_values_are_frozen(registry_clone: Path) -> None:
    registry = Registry.open(registry_clone)
    registry.submit({"task_id": "frozen", "image": "ptm-test/stats:1", "sites": ["s"]})
    status = registry.status("frozen")
    with pytest.raises(dataclasses.FrozenInstanceError):
        registry.remote = "elsewhere"  # type: ignore[misc]  # the point of the test
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.sites = ()  # type: ignore[misc]  # the point of the test


def test_draft_from_mapping() -> None:
    draft = draft_from_mapping(
        {"task_id": "x", "image": "i:1", "sites": ["a", "b"], "command": ["sh", "-c", "true"]}
    )
    assert draft.sites == ("a", "b") and draft.command == ("sh", "-c", "true")
    assert draft.files == ()
    with_files = draft_from_mapping(
        {"task_id": "x", "image": "i:1", "sites": "a", "files": ["f.csv"]}
    )
    assert with_files.sites == ("a",) and with_files.files == (Path("f.csv"),)
    with pytest.raises(PtmError, match="unknown task fields \\['site'\\]"):
        draft_from_mapping({"task_id": "x", "image": "i:1", "site": ["a"]})
    with pytest.raises(PtmError, match="incomplete task"):
        draft_from_mapping({"task_id": "x"})
