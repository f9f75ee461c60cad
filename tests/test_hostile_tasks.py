"""Crafted tasks-branch trees pushed to a real bare registry, against a real agent and engine.

Every shape ``git add`` never makes is refused for that task alone (rejected where the site can
say so, logged once where it cannot), nothing is written outside the agent's own run folders,
and a good task pushed beside them, and after them, completes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ptm.agent import Agent
from tests import crafted
from tests.agent_support import Researcher, remote_status, site_agent
from tests.crafted import FILE, GITLINK, LINK, TREE
from tests.fixtures_git import SigningKey, git, write_allowed_signers

pytestmark = pytest.mark.docker

TASK = yaml.safe_dump(
    {
        "ptm": 1,
        "image": "ptm-test/busybox:latest",
        "sites": ["hospital-a"],
        "command": ["sh", "-c", "echo planted > /ptm/output/x.txt"],
    }
).encode()


def task_tree(
    repo: Path, extra: list[crafted.RawEntry] | None = None, *, task: bytes = TASK
) -> str:
    return crafted.tree(repo, [(FILE, b"task.yaml", crafted.blob(repo, task)), *(extra or [])])


def files_tree(repo: Path, entries: list[crafted.RawEntry]) -> list[crafted.RawEntry]:
    return [(TREE, b"files", crafted.tree(repo, entries))]


Shape = Callable[[Path], list[crafted.RawEntry]]


def shapes(sentinel: Path) -> dict[bytes, tuple[Shape, str]]:
    """name in tasks/ -> (entries to put there, what the agent must do: rejected or refused)."""
    link_to = str(sentinel.parent).encode()

    def deep(repo: Path) -> list[crafted.RawEntry]:
        inner = crafted.blob(repo, b"deep")
        mode = FILE
        for level in range(40):
            inner, mode = crafted.tree(repo, [(mode, f"d{level}".encode(), inner)]), TREE
        return [(TREE, b"deep", task_tree(repo, files_tree(repo, [(TREE, b"d", inner)])))]

    return {
        b"..": (lambda r: [(TREE, b"..", task_tree(r))], "refused"),
        b".git": (lambda r: [(TREE, b".git", task_tree(r))], "refused"),
        b"Bad_Name": (lambda r: [(TREE, b"Bad_Name", task_tree(r))], "refused"),
        b"new\nline": (lambda r: [(TREE, b"new\nline", task_tree(r))], "refused"),
        b"\xff\xfe": (lambda r: [(TREE, b"\xff\xfe", task_tree(r))], "refused"),
        b"esc\x1b[2J": (lambda r: [(TREE, b"esc\x1b[2J", task_tree(r))], "refused"),
        b"twice": (
            lambda r: [(TREE, b"twice", task_tree(r)), (TREE, b"twice", task_tree(r))],
            "ignored",
        ),
        b"linked": (lambda r: [(LINK, b"linked", crafted.blob(r, link_to))], "ignored"),
        b"gitlink": (lambda r: [(GITLINK, b"gitlink", "1" * 40)], "ignored"),
        b"yaml-link": (
            lambda r: [
                (
                    TREE,
                    b"yaml-link",
                    crafted.tree(r, [(LINK, b"task.yaml", crafted.blob(r, b"/etc/passwd"))]),
                )
            ],
            "ignored",
        ),
        b"dotdot-file": (
            lambda r: [
                (
                    TREE,
                    b"dotdot-file",
                    task_tree(r, files_tree(r, [(FILE, b"..", crafted.blob(r, b"x"))])),
                )
            ],
            "rejected",
        ),
        b"input-link": (
            lambda r: [
                (
                    TREE,
                    b"input-link",
                    task_tree(r, files_tree(r, [(LINK, b"data", crafted.blob(r, link_to))])),
                )
            ],
            "rejected",
        ),
        b"input-git": (
            lambda r: [
                (TREE, b"input-git", task_tree(r, files_tree(r, [(TREE, b".git", task_tree(r))])))
            ],
            "rejected",
        ),
        b"huge": (
            lambda r: [
                (
                    TREE,
                    b"huge",
                    task_tree(
                        r, files_tree(r, [(FILE, b"big", crafted.big_blob(r, 60 * 1024**2))])
                    ),
                )
            ],
            "rejected",
        ),
        b"same-name": (
            lambda r: [
                (
                    TREE,
                    b"same-name",
                    crafted.tree(
                        r,
                        [
                            (LINK, b"files", crafted.blob(r, link_to)),
                            (FILE, b"task.yaml", crafted.blob(r, TASK)),
                            (
                                TREE,
                                b"files",
                                crafted.tree(r, [(FILE, b"a", crafted.blob(r, b"a"))]),
                            ),
                        ],
                    ),
                )
            ],
            "rejected",
        ),
        b"two-yamls": (
            lambda r: [
                (
                    TREE,
                    b"two-yamls",
                    crafted.tree(
                        r,
                        [
                            (FILE, b"task.yaml", crafted.blob(r, TASK)),
                            (
                                FILE,
                                b"task.yaml",
                                crafted.blob(r, TASK.replace(b"hospital-a", b"elsewhere")),
                            ),
                        ],
                    ),
                )
            ],
            "ignored",
        ),
        b"deep": (deep, "rejected"),
    }


def push_good(
    researcher: Researcher, task_id: str, script: str, *, sign_key: Path | None = None
) -> None:
    """A good task beside crafted ones (a normal clone could not check those out any more),
    for every site, signed when given a key."""
    clone = researcher.work
    document = {**yaml.safe_load(TASK), "command": ["sh", "-c", script], "sites": ["*"]}
    tree = task_tree(clone, task=yaml.safe_dump(document).encode())
    name = task_id.encode()
    sha = crafted.graft_task(clone, name, [(TREE, name, tree)], sign_key=sign_key)
    crafted.push_commit(clone, sha)


def push_shapes(researcher: Researcher, sentinel: Path) -> list[bytes]:
    clone = researcher.work
    names = []
    for name, (make, _) in shapes(sentinel).items():
        sha = crafted.graft_task(clone, name, make(clone), message=f"crafted {name!r}")
        crafted.push_commit(clone, sha)
        names.append(name)
    return names


def no_file_outside(root: Path, agent: Agent) -> None:
    for folder, dirs, files in os.walk(root):
        for name in files + dirs:
            assert name != "x.txt" or Path(folder).is_relative_to(agent.workdir.root)


def test_every_crafted_task_is_refused_alone_and_good_tasks_still_run(
    bare_registry: Path, tmp_path: Path, alice: SigningKey, test_image: str
) -> None:
    sentinel = tmp_path / "outside" / "keep.txt"
    sentinel.parent.mkdir()
    sentinel.write_text("untouched")
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    push_shapes(researcher, sentinel)
    push_good(researcher, "good-1", "echo one > /ptm/output/one.txt", sign_key=alice.private)
    signers = write_allowed_signers(tmp_path / "allowed_signers", alice)
    policy = {
        "require_signed_tasks": True,
        "allowed_signers": str(signers),
        "trusted_submitters": [alice.principal],
    }
    agent = site_agent(tmp_path, "hospital-a", bare_registry, policy=policy)
    other = site_agent(tmp_path, "hospital-b", bare_registry, policy=policy)

    agent.once()
    other.once()
    push_good(researcher, "good-2", "echo two > /ptm/output/two.txt", sign_key=alice.private)
    agent.once()
    other.once()

    for good in ("good-1", "good-2"):
        for site in ("hospital-a", "hospital-b"):
            status = remote_status(bare_registry, good, site)
            assert status is not None and status["state"] == "completed", (site, status["reason"])
            assert status["submitted_by"] == alice.principal
    expected = shapes(sentinel)
    warnings = "\n".join(agent.workdir.load_state().warnings)
    for name, (_, outcome) in expected.items():
        text = name.decode("utf-8", "replace")
        if outcome == "rejected":
            status = remote_status(bare_registry, text)
            assert status is not None and status["state"] == "rejected", (name, status)
            assert status["reason"].startswith("invalid task:")
        elif outcome == "refused":
            assert "not a valid task id" in warnings
        else:
            assert f"task {text} ignored" in warnings, name
    assert "\x1b" not in warnings and "\nline" not in warnings
    assert sentinel.read_text() == "untouched"
    assert sorted(p.name for p in sentinel.parent.iterdir()) == ["keep.txt"]
    assert agent.workdir.root.is_dir() and (agent.workdir.root / "ledger.git" / "HEAD").is_file()
    no_file_outside(tmp_path, agent)
    assert agent.workdir.root.stat().st_mode & 0o777 == 0o700


def test_a_refusal_is_logged_once_not_every_cycle(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    clone = researcher.work
    crafted.push_commit(
        clone, crafted.graft_task(clone, b"Bad_Name", [(TREE, b"Bad_Name", task_tree(clone))])
    )
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.once()
    push_good(researcher, "later", "true")
    agent.once()
    warnings = agent.workdir.load_state().warnings
    assert sum("Bad_Name" in w for w in warnings) == 1
    assert remote_status(bare_registry, "later")["state"] == "completed"  # type: ignore[index]


def test_a_broken_tasks_folder_waits_for_a_repair(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    clone = researcher.work
    git(clone, "fetch", "-q", "origin")
    tasks = crafted.tasks_tree(clone, "origin/main")
    root = crafted.replace_entries(
        clone, "origin/main^{tree}", b"tasks", [(TREE, b"tasks", tasks), (TREE, b"tasks", tasks)]
    )
    crafted.push_commit(
        clone, crafted.commit(clone, root, [git(clone, "rev-parse", "origin/main")])
    )
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.once()
    assert any("is not one folder" in w for w in agent.workdir.load_state().warnings)
    git(clone, "fetch", "-q", "origin")
    repaired = crafted.commit(
        clone,
        git(clone, "rev-parse", "origin/main~1^{tree}"),
        [git(clone, "rev-parse", "origin/main")],
        "repair",
    )
    crafted.push_commit(clone, repaired)
    push_good(researcher, "after-repair", "true")
    agent.once()
    assert remote_status(bare_registry, "after-repair")["state"] == "completed"  # type: ignore[index]


def test_task_resources_that_would_mean_no_limit_are_rejected(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("tiny-cpu", "true")
    clone = researcher.work
    document = {**yaml.safe_load(TASK), "resources": {"cpus": 1e-10}}
    sha = crafted.graft_task(
        clone,
        b"nanocpu",
        [(TREE, b"nanocpu", task_tree(clone, task=yaml.safe_dump(document).encode()))],
    )
    crafted.push_commit(clone, sha)
    document = {**yaml.safe_load(TASK), "resources": {"memory": "1k"}}
    sha = crafted.graft_task(
        clone,
        b"nanomem",
        [(TREE, b"nanomem", task_tree(clone, task=yaml.safe_dump(document).encode()))],
    )
    crafted.push_commit(clone, sha)
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.once()
    cpu = remote_status(bare_registry, "nanocpu")
    mem = remote_status(bare_registry, "nanomem")
    assert cpu is not None and cpu["state"] == "rejected" and "resources.cpus" in cpu["reason"]
    assert mem is not None and mem["state"] == "rejected" and "resources.memory" in mem["reason"]


def test_a_tasks_folder_out_of_git_order_is_refused_whole(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    """git's diffs assume sorted trees; an unsorted tasks/ could hide a change from the
    signature check, so the agent refuses such a commit and waits for a repair."""
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    clone = researcher.work
    push_good(researcher, "aaa", "true")
    git(clone, "fetch", "-q", "origin")
    entries = crafted.read_tree_entries(clone, "origin/main:tasks")
    shuffled = crafted.tree(
        clone, list(reversed([*entries, (TREE, b"zzz", task_tree(clone))])), keep_order=True
    )
    root = crafted.replace_entries(
        clone, "origin/main^{tree}", b"tasks", [(TREE, b"tasks", shuffled)]
    )
    crafted.push_commit(
        clone, crafted.commit(clone, root, [git(clone, "rev-parse", "origin/main")])
    )
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.once()
    assert any("not in git's order" in w for w in agent.workdir.load_state().warnings)
    assert remote_status(bare_registry, "zzz") is None
