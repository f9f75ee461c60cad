"""Registries opened by URL read objects, not a checkout (issue 8, part 6): crafted trees pushed
to the tasks branch and to a results branch of a real bare registry break neither ``--url``
readers nor ``Registry.open(url)``, and submitting or cancelling through the URL keeps other
people's entries, crafted ones too, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptm.api import Registry
from ptm.errors import PtmError
from ptm.federation import INVALID
from ptm.main import main
from tests import crafted
from tests.crafted import EXEC, FILE, LINK, TREE
from tests.fixtures_git import SigningKey, git
from tests.test_researcher_hostile import push_site, two_status_files
from tests.test_status_cmd import SiteBranch, add_task, final_result


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "ptm" / "registries"


def push_crafted_tasks_branch(clone: Path) -> None:
    """tasks/ gets '..', '.git', a link, a duplicate, a blob; the root a '.git' and a link."""
    task = crafted.blob(clone, b"ptm: 1\nimage: x:1\nsites: [hospital-a]\n")
    folder = crafted.tree(clone, [(FILE, b"task.yaml", task)])
    hook = crafted.blob(clone, b"#!/bin/sh\ntouch /tmp/ptm-owned\n")
    dot_git = crafted.tree(
        clone, [(TREE, b"hooks", crafted.tree(clone, [(EXEC, b"post-checkout", hook)]))]
    )
    sha = crafted.graft_task(
        clone,
        b"zz",
        [
            (TREE, b"..", folder),
            (TREE, b".git", dot_git),
            (LINK, b"linked", crafted.blob(clone, b"../../../etc")),
            (TREE, b"twice", folder),
            (TREE, b"twice", folder),
            (FILE, b"blob-task", task),
        ],
    )
    root = crafted.read_tree_entries(clone, f"{sha}^{{tree}}")
    extra = [(TREE, b".git", dot_git), (LINK, b"escape", crafted.blob(clone, b"/etc"))]
    new_root = crafted.tree(clone, [*root, *extra])
    crafted.push_commit(clone, crafted.commit(clone, new_root, [sha], "crafted root"))


@pytest.fixture
def hostile(bare_registry: Path, registry_clone: Path) -> Path:
    add_task(registry_clone, "t1", ("hospital-a", "evil"))
    SiteBranch(bare_registry, "hospital-a").put(final_result("t1", "hospital-a"))
    return registry_clone


def test_url_readers_keep_working_after_crafted_pushes(
    bare_registry: Path, hostile: Path, cache: Path, tmp_path: Path
) -> None:
    url = f"file://{bare_registry}"
    before = Registry.open(url)  # the cache clone exists before the crafted pushes
    assert [t.task_id for t in before.overview().tasks] == ["t1"]
    push_crafted_tasks_branch(hostile)
    push_site(hostile, two_status_files(hostile))

    registry = Registry.open(url)
    assert registry.root == before.root
    assert sorted(p.name for p in registry.root.iterdir()) == [".git"]  # no work tree at all
    overview = registry.overview()
    rows = {t.task_id: t for t in overview.tasks}
    assert {s.site: s.state for s in rows["t1"].sites} == {
        "hospital-a": "completed",
        "evil": INVALID,
    }
    assert "appears more than once" in str(rows["twice"].problem)
    assert "symbolic link" in str(rows["linked"].problem)
    assert any("tasks/..: the name is '..'" in p for p in overview.problems)
    assert any("tasks/.git" in p for p in overview.problems)
    status = registry.status("t1")
    evil = status.site("evil")
    assert evil is not None and evil.state == INVALID and "more than once" in str(evil.problem)
    collected = registry.results("t1", tmp_path / "out")
    assert collected["hospital-a"].read_text("summary.csv") == "site,mean\nx,42\n"
    assert collected["evil"].problem is not None
    assert sorted(p.name for p in registry.root.iterdir()) == [".git"]
    assert not Path("/tmp/ptm-owned").exists()


def test_url_commands_after_crafted_pushes(
    bare_registry: Path,
    hostile: Path,
    cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"file://{bare_registry}"
    assert main(["status", "--url", url]) == 0
    push_crafted_tasks_branch(hostile)
    push_site(hostile, two_status_files(hostile))
    capsys.readouterr()
    assert main(["status", "--url", url, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert "t1" in [t["task"] for t in document["tasks"]]
    assert any("tasks/.git" in p for p in document["problems"])
    assert main(["status", "t1", "--url", url]) == 0
    assert "hospital-a  completed" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["results", "t1", "--url", url, "--out", str(out)]) == 0
    assert (out / "hospital-a" / "output" / "summary.csv").is_file()
    assert not (out / "evil").exists()


def raw_tasks(bare: Path, rev: str) -> list[tuple[bytes, bytes, str]]:
    return crafted.read_tree_entries(bare, f"{rev}:tasks")


def test_submit_and_cancel_through_a_url_keep_crafted_entries(
    bare_registry: Path, hostile: Path, cache: Path, alice: SigningKey
) -> None:
    url = f"file://{bare_registry}"
    push_crafted_tasks_branch(hostile)
    crafted_tasks = raw_tasks(bare_registry, "main")
    crafted_root = crafted.read_tree_entries(bare_registry, "main^{tree}")
    registry = Registry.open(url)
    submitted = registry.submit(
        {"task_id": "fresh", "image": "ptm-test/stats:1", "sites": ["hospital-a"]},
        sign_key=alice.private,
    )
    assert submitted.signed and git(bare_registry, "rev-parse", "main") == submitted.commit
    after = raw_tasks(bare_registry, "main")
    assert [e for e in after if e[1] != b"fresh"] == sorted(
        crafted_tasks, key=lambda e: e[1] + (b"/" if e[0] == TREE else b"")
    )
    assert git(bare_registry, "show", "main:tasks/fresh/task.yaml").startswith("ptm: 1")
    root_after = crafted.read_tree_entries(bare_registry, "main^{tree}")
    assert [e for e in root_after if e[1] != b"tasks"] == sorted(
        [e for e in crafted_root if e[1] != b"tasks"],
        key=lambda e: e[1] + (b"/" if e[0] == TREE else b""),
    )
    assert registry.status("fresh").task is not None
    with pytest.raises(PtmError, match="in the registry already"):
        draft = {"task_id": "fresh", "image": "ptm-test/stats:1", "sites": ["s"]}
        registry.submit(draft, sign_key=alice.private)

    cancelled = registry.cancel("fresh", reason="wrong image", sign_key=alice.private)
    assert cancelled.signed and git(bare_registry, "rev-parse", "main") == cancelled.commit
    status = registry.status("fresh")
    assert status.cancellation is not None and status.cancellation.reason == "wrong image"
    with pytest.raises(PtmError, match="cancelled already"):
        registry.cancel("fresh", reason="again", sign_key=alice.private)
    with pytest.raises(PtmError, match="no task 'nope'"):
        registry.cancel("nope", reason="x", sign_key=alice.private)
    assert sorted(p.name for p in registry.root.iterdir()) == [".git"]


def test_a_push_race_builds_the_commit_again(
    bare_registry: Path, registry_clone: Path, cache: Path
) -> None:
    registry = Registry.open(f"file://{bare_registry}")
    registry.refresh()
    add_task(registry_clone, "meanwhile")  # someone else pushes after our fetch
    retries: list[str] = []
    registry_no_fetch = Registry(registry.root, registry.tasks_branch, url=registry.url)
    from ptm.object_commits import submit_by_objects
    from ptm.submission import TaskDraft

    submit_by_objects(
        registry_no_fetch.repo,
        registry_no_fetch.refs,
        TaskDraft("mine", "ptm-test/stats:1", ("hospital-a",)),
        sign_key=None,
        on_retry=lambda attempt, why: retries.append(why),
    )
    assert retries and "again" in retries[0]
    names = git(bare_registry, "ls-tree", "--name-only", "main:tasks").split()
    assert names == ["meanwhile", "mine"]
