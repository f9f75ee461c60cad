"""What a results branch holds when a journal starts, read from crafted trees: only real status
files of this site count, and listings are size-checked before they are read (an adopted
branch is anyone's to push)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ptm import adoption
from ptm.adoption import status_blobs
from ptm.errors import RegistryError
from ptm.gitrepo import GitRepo
from tests.crafted import FILE, LINK, TREE, blob, commit, tree

REF = "refs/heads/results/s1"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "branch.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def publish(repo: Path, results: str) -> None:
    root = tree(repo, [(TREE, b"results", results)])
    subprocess.run(["git", "update-ref", REF, commit(repo, root, [])], cwd=repo, check=True)


def site_folder(repo: Path, status: bytes = b"state: completed\n") -> str:
    return tree(repo, [(FILE, b"status.yaml", blob(repo, status))])


def test_only_this_sites_status_files_count(repo: Path) -> None:
    status = blob(repo, b"state: completed\n")
    good = tree(repo, [(FILE, b"status.yaml", status)])
    linked = tree(repo, [(LINK, b"status.yaml", status)])
    folder_named_status = tree(repo, [(TREE, b"status.yaml", good)])
    results = tree(
        repo,
        [
            (TREE, b"t1", tree(repo, [(TREE, b"s1", good), (TREE, b"s2", good)])),
            (TREE, b"t2", tree(repo, [(TREE, b"s2", good)])),  # another site's
            (TREE, b"t3", tree(repo, [(TREE, b"s1", linked)])),
            (TREE, b"t4", tree(repo, [(TREE, b"s1", folder_named_status)])),
            (TREE, b"t5", tree(repo, [(FILE, b"s1", status)])),
            (FILE, b"t6", status),
        ],
    )
    publish(repo, results)
    assert status_blobs(GitRepo(repo), REF, "s1") == {"t1": status}
    assert status_blobs(GitRepo(repo), "refs/heads/none", "s1") == {}


def test_a_results_listing_over_its_cap_is_refused_unread(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = tree(repo, [(TREE, b"s1", site_folder(repo))])
    publish(repo, tree(repo, [(TREE, f"t{n:04d}".encode(), task) for n in range(400)]))
    assert len(status_blobs(GitRepo(repo), REF, "s1")) == 400
    monkeypatch.setattr(adoption, "MAX_RESULTS_LISTING", 4096)
    with pytest.raises(RegistryError, match=r"results: its listing is \d+ bytes, at most 4096"):
        status_blobs(GitRepo(repo), REF, "s1")


def test_task_folders_over_their_cap_in_all_are_refused(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One task folder named four hundred times: small to store, big to read each time.
    wide = tree(repo, [(TREE, f"s{n:03d}".encode(), site_folder(repo)) for n in range(200)])
    publish(repo, tree(repo, [(TREE, f"t{n:04d}".encode(), wide) for n in range(400)]))
    monkeypatch.setattr(adoption, "MAX_TASK_LISTINGS", 1024 * 1024)
    with pytest.raises(RegistryError, match=r"results/\* \(t\d+\): brings the listings read over"):
        status_blobs(GitRepo(repo), REF, "s1")
