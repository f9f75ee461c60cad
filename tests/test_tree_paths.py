"""ptm.tree_paths (and treecheck.read_folders) against crafted trees in a real repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ptm.gitrepo import GitRepo
from ptm.tree_paths import Refused, Wanted, locate, read_files
from ptm.treecheck import read_folders
from tests import crafted
from tests.crafted import FILE, LINK, TREE


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def test_read_folders_checks_sizes_before_reading(repo: Path) -> None:
    one = crafted.blob(repo, b"1")
    small = crafted.tree(repo, [(FILE, b"a", one)])
    wide = crafted.tree(repo, [(FILE, f"f{i:04d}".encode(), one) for i in range(100)])
    found = read_folders(
        GitRepo(repo), [small, wide, one, "0" * 40], max_bytes=1000, max_total_bytes=10**6
    )
    assert isinstance(found[0], list) and [e.name for e in found[0]] == [b"a"]
    assert found[1] == f"its listing is {100 * 33} bytes, at most 1000 are read"
    assert found[2] == found[3] == "is not a folder"
    total = read_folders(GitRepo(repo), [small, small], max_bytes=1000, max_total_bytes=40)
    assert isinstance(total[0], list) and "over 40 bytes" in str(total[1])


def commit_of(repo: Path, tree: str) -> str:
    return crafted.commit(repo, tree, [])


def test_locate_walks_many_paths_and_refuses_each_bad_step(repo: Path) -> None:
    status = crafted.blob(repo, b"state: completed\n")
    good = crafted.tree_of(repo, {"results/t1/a/status.yaml": b"state: completed\n"})
    twice = crafted.tree(repo, [(FILE, b"status.yaml", status), (FILE, b"status.yaml", status)])
    dup = crafted.tree(
        repo,
        [
            (
                TREE,
                b"results",
                crafted.tree(repo, [(TREE, b"t1", crafted.tree(repo, [(TREE, b"b", twice)]))]),
            )
        ],
    )
    link = crafted.tree(repo, [(LINK, b"results", crafted.blob(repo, b"/etc"))])
    wanted = {
        "a": Wanted(commit_of(repo, good), ("results", "t1", "a", "status.yaml"), "results/a:"),
        "b": Wanted(commit_of(repo, dup), ("results", "t1", "b", "status.yaml"), "results/b:"),
        "c": Wanted(commit_of(repo, link), ("results", "t1", "c", "status.yaml"), "results/c:"),
        "d": Wanted(commit_of(repo, good), ("results", "t2", "d", "status.yaml"), "results/d:"),
        "e": Wanted("not-a-commit", ("results",), "results/e:"),
    }
    found = locate(GitRepo(repo), wanted)
    assert found["d"] is None
    assert str(found["b"]).startswith("results/b:results/t1/b/status.yaml: appears more than once")
    assert str(found["c"]).startswith("results/c:results: is a symbolic link")
    assert isinstance(found["e"], Refused)
    labels = {k: k for k in wanted}
    contents = read_files(
        GitRepo(repo), found, labels, max_bytes={"a": 5, "b": 1, "c": 1, "d": 1, "e": 1}
    )
    assert str(contents["a"]) == "a: is 17 bytes, at most 5 are read [max-bytes]"
    assert (
        read_files(GitRepo(repo), {"a": found["a"]}, labels, max_bytes=100)["a"]
        == b"state: completed\n"
    )
