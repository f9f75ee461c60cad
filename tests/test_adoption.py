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
from ptm.ledger import Ledger
from ptm.status import StatusRecord, utc_now_text
from tests.crafted import FILE, LINK, TREE, blob, commit, read_tree_entries, tree
from tests.fixtures_git import git, make_signing_key

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


def test_an_adopted_record_is_proven_only_when_its_last_commit_is_signed_by_the_site(
    tmp_path: Path,
) -> None:
    key = make_signing_key(tmp_path / "keys", "ptm-agent@s1")
    registry = tmp_path / "registry.git"
    subprocess.run(["git", "init", "-q", "--bare", str(registry)], check=True)
    first = Ledger(tmp_path / "a", url=str(registry), site="s1", ssh_key=None, sign_key=key.private)
    first.ensure()
    first.record(status_record("t1"))
    first.record(status_record("t2"))
    assert first.push()
    # Someone else's (unsigned) commit on the registry's copy: t2 changed, t3 added.
    clone = tmp_path / "other"
    subprocess.run(
        ["git", "clone", "-q", "-b", "results/s1", str(registry), str(clone)], check=True
    )
    for task in ("t2", "t3"):
        path = clone / "results" / task / "s1" / "status.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("ptm: 1\nstate: completed\n")
    git(clone, "add", "-A")
    git(clone, "-c", "commit.gpgSign=false", "commit", "-qm", "not the agent")
    git(clone, "push", "-q", "origin", "results/s1")
    fresh = Ledger(tmp_path / "b", url=str(registry), site="s1", ssh_key=None, sign_key=key.private)
    fresh.ensure()  # a lost work folder: the registry's branch is adopted
    assert [fresh.is_proven(t) for t in ("t1", "t2", "t3")] == [True, False, False]
    keyless = Ledger(tmp_path / "c", url=str(registry), site="s1", ssh_key=None, sign_key=None)
    keyless.ensure()
    assert not any(keyless.is_proven(t) for t in ("t1", "t2", "t3"))


def status_record(task: str) -> StatusRecord:
    return StatusRecord(
        task=task,
        site="s1",
        state="accepted",
        task_commit="a" * 40,
        received_at=utc_now_text(),
        agent="ptm test",
        submitted_by=None,
        image="ptm-test/busybox:latest",
    )


def test_an_adopted_history_git_log_cannot_name_in_a_line_is_read_no_further(
    tmp_path: Path,
) -> None:
    """A crafted commit on top whose path is longer than any status path: the stream stops
    there, and what is not decided by then counts as not proven (never acted on)."""
    key = make_signing_key(tmp_path / "keys", "ptm-agent@s1")
    registry = tmp_path / "registry.git"
    subprocess.run(["git", "init", "-q", "--bare", str(registry)], check=True)
    first = Ledger(tmp_path / "a", url=str(registry), site="s1", ssh_key=None, sign_key=key.private)
    first.ensure()
    first.record(status_record("t1"))
    assert first.push()
    tip = git(registry, "rev-parse", REF)
    root = git(registry, "rev-parse", f"{tip}^{{tree}}")
    long_name = b"x" * 5000
    site = tree(registry, [(FILE, b"status.yaml", blob(registry, b"state: done\n"))])
    task = tree(registry, [(TREE, b"s1", site)])
    results = tree(
        registry, [*read_tree_entries(registry, f"{root}:results"), (TREE, long_name, task)]
    )
    crafted = commit(registry, tree(registry, [(TREE, b"results", results)]), [tip])
    git(registry, "update-ref", REF, crafted)
    fresh = Ledger(tmp_path / "b", url=str(registry), site="s1", ssh_key=None, sign_key=key.private)
    fresh.ensure()
    assert fresh.status_of("t1") is not None and not fresh.is_proven("t1")
