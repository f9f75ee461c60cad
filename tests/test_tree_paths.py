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


def test_iter_blobs_reads_in_chunks_and_keeps_the_order(repo: Path) -> None:
    from ptm.tree_paths import iter_blobs

    blobs = [crafted.blob(repo, bytes([65 + i]) * (10 + i)) for i in range(6)]
    big = crafted.blob(repo, b"x" * 100)
    tree = crafted.tree(repo, [(FILE, b"a", blobs[0])])
    oids = [blobs[0], big, blobs[1], tree, *blobs[2:]]
    found = list(iter_blobs(GitRepo(repo), oids, max_bytes=50, chunk_bytes=25))
    assert [oid for oid, _ in found] == oids
    assert found[0][1] == b"A" * 10 and found[2][1] == b"B" * 11
    assert "at most 50" in str(found[1][1]) and "missing or no file" in str(found[3][1])
    assert [data for _, data in found[4:]] == [bytes([67 + i]) * (12 + i) for i in range(4)]
