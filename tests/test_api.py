"""The Python API (ptm.api.Registry) against a real bare registry and real result branches."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from ptm.api import Registry, SignatureRequired, WaitTimedOut, draft_from_mapping
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
    # waiting is tested here, not signing (see test_unsigned_work_is_refused_…)
    registry.submit(TaskDraft("slow", "ptm-test/stats:1", ("hospital-a",)), allow_unsigned=True)
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
    draft = {"task_id": "later", "image": "ptm-test/stats:1", "sites": ["hospital-a"]}
    registry.submit(draft, allow_unsigned=True)  # waiting is tested here, not signing
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
    draft = {"task_id": "c1", "image": "ptm-test/stats:1", "sites": "hospital-a"}
    registry.submit(draft, sign_key=alice.private)
    cancelled = registry.cancel("c1", reason="oops", sign_key=alice.private)
    assert cancelled.signed and cancelled.task_id == "c1"
    assert git(bare_registry, "rev-parse", "main") == cancelled.commit
    status = registry.status("c1")
    assert status.cancellation is not None and status.cancellation.reason == "oops"
    with pytest.raises(PtmError, match="cancelled already"):
        registry.cancel("c1", reason="again", sign_key=alice.private)


def test_a_url_registry_has_no_work_tree(bare_registry: Path, cache: Path) -> None:
    registry = Registry.open(str(bare_registry))
    assert sorted(p.name for p in registry.root.iterdir()) == [".git"]
    (registry.root / "tasks" / "junk").mkdir(parents=True)
    (registry.root / "tasks" / "junk" / "task.yaml").write_text("left over\n")
    # the missing work tree is tested here, not signing
    registry.submit(
        {"task_id": "fresh", "image": "ptm-test/stats:1", "sites": ["s"]}, allow_unsigned=True
    )
    assert git(bare_registry, "ls-tree", "--name-only", "main:tasks").split() == ["fresh"]
    assert [t.task_id for t in registry.overview().tasks] == ["fresh"]


def test_values_are_frozen(registry_clone: Path) -> None:
    registry = Registry.open(registry_clone)
    draft = {"task_id": "frozen", "image": "ptm-test/stats:1", "sites": ["s"]}
    registry.submit(draft, allow_unsigned=True)  # frozen values are tested here, not signing
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


# ---- unsigned work (registry.yaml: require_signed_tasks, as 'ptm registry init' writes it) ----


def remote_refs(bare: Path) -> str:
    return git(bare, "for-each-ref", "--format=%(refname) %(objectname)")


def open_registry(how: str, bare: Path, clone_dir: Path) -> Registry:
    return Registry.open(clone_dir) if how == "clone" else Registry.open(f"file://{bare}")


def is_signed(bare: Path, commit: str) -> bool:
    return "\ngpgsig " in git(bare, "cat-file", "commit", commit)


DRAFT = {"task_id": "t1", "image": "ptm-test/stats:1", "sites": ["hospital-a"]}


@pytest.mark.parametrize("how", ["clone", "url"])
def test_unsigned_work_is_refused_and_nothing_is_pushed(
    bare_registry: Path, registry_clone: Path, cache: Path, alice: SigningKey, how: str
) -> None:
    registry = open_registry(how, bare_registry, registry_clone)
    before = remote_refs(bare_registry)
    with pytest.raises(SignatureRequired) as refused:
        registry.submit(DRAFT)
    message = str(refused.value)
    assert message.startswith("tasks/t1: not submitted: no signing key is set up")
    assert "require_signed_tasks" in message and "the id would be used up" in message
    assert "pass sign_key=KEY" in message and "pass allow_unsigned=True" in message
    assert remote_refs(bare_registry) == before
    assert not (registry_clone / "tasks" / "t1").exists()  # nothing written in the clone

    submitted = registry.submit(DRAFT, sign_key=alice.private)  # signed: it goes
    assert submitted.signed and is_signed(bare_registry, submitted.commit)
    before = remote_refs(bare_registry)
    with pytest.raises(SignatureRequired, match=r"tasks/t1: not cancelled: .* ignore the cancel"):
        registry.cancel("t1", reason="wrong image")
    assert remote_refs(bare_registry) == before
    assert registry.status("t1").cancellation is None


@pytest.mark.parametrize("how", ["clone", "url"])
def test_allow_unsigned_pushes_unsigned_work(
    bare_registry: Path, registry_clone: Path, cache: Path, how: str
) -> None:
    registry = open_registry(how, bare_registry, registry_clone)
    submitted = registry.submit(DRAFT, allow_unsigned=True)
    assert not submitted.signed and not is_signed(bare_registry, submitted.commit)
    assert git(bare_registry, "rev-parse", "main") == submitted.commit
    cancelled = registry.cancel("t1", reason="wrong image", allow_unsigned=True)
    assert not cancelled.signed and git(bare_registry, "rev-parse", "main") == cancelled.commit


@pytest.mark.parametrize("how", ["clone", "url"])
def test_gits_own_signing_config_signs_without_a_key_argument(
    bare_registry: Path, registry_clone: Path, cache: Path, alice: SigningKey, how: str
) -> None:
    git(registry_clone, "config", "--global", "gpg.format", "ssh")
    git(registry_clone, "config", "--global", "user.signingkey", str(alice.private))
    registry = open_registry(how, bare_registry, registry_clone)
    submitted = registry.submit(DRAFT)
    assert submitted.signed and is_signed(bare_registry, submitted.commit)
    cancelled = registry.cancel("t1", reason="wrong image")
    assert cancelled.signed and is_signed(bare_registry, cancelled.commit)


@pytest.mark.parametrize("how", ["clone", "url"])
def test_a_registry_that_does_not_require_signatures_takes_unsigned_work(
    bare_registry: Path, registry_clone: Path, cache: Path, how: str
) -> None:
    """The rule follows the registry's own registry.yaml (a URL's read from git objects)."""
    registry_yaml = registry_clone / "registry.yaml"
    text = registry_yaml.read_text()
    registry_yaml.write_text(
        text.replace("require_signed_tasks: true", "require_signed_tasks: false")
    )
    git(registry_clone, "commit", "-qam", "sites accept unsigned tasks")
    git(registry_clone, "push", "-q", "origin", "main")
    registry = open_registry(how, bare_registry, registry_clone)
    submitted = registry.submit(DRAFT)
    assert not submitted.signed and git(bare_registry, "rev-parse", "main") == submitted.commit
