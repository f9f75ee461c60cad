"""The ledger's own object writer against real git: git reads, checks (fsck) and agrees on
every object it writes, and the ledger's branch stays one git fully accepts."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from ptm.errors import RegistryError
from ptm.gitrepo import GitRepo
from ptm.journal_objects import (
    EMPTY_TREE,
    JournalTrees,
    Listing,
    can_move_refs,
    commit_object,
    move_ref,
    object_id,
    read_ref,
    tree_object,
    write_object,
)
from ptm.ledger import Ledger
from ptm.signatures import verify_commits
from ptm.status import StatusRecord, utc_now_text
from tests.fixtures_git import git, make_signing_key, write_allowed_signers


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    path = tmp_path / "journal.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def git_bytes(cwd: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(
        ["git", *args], cwd=cwd, input=stdin, capture_output=True, check=True
    ).stdout


def fsck(repository: Path) -> None:
    done = subprocess.run(
        ["git", "fsck", "--strict", "--no-dangling"], cwd=repository, capture_output=True, text=True
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_a_blob_is_the_object_git_writes_and_reads(bare: Path) -> None:
    data = b"state: completed\n\0binary\xff\n"
    oid = write_object(bare, "blob", data)
    assert oid == git_bytes(bare, "hash-object", "--stdin", stdin=data).decode().strip()
    assert git_bytes(bare, "cat-file", "blob", oid) == data
    assert write_object(bare, "blob", data) == oid  # written once, found the second time
    assert not list((bare / "objects" / oid[:2]).glob("tmp_obj_*"))
    fsck(bare)


def test_a_tree_lists_its_entries_in_gits_order(bare: Path) -> None:
    blob = write_object(bare, "blob", b"x\n")
    sub = write_object(bare, "tree", tree_object({b"f": (b"100644", blob)}))
    # git sorts a folder as if its name ended in "/": "a.b" < "a/" < "a0", but "a" (file) < "a.b"
    folder = {
        b"a0": (b"100644", blob),
        b"a": (b"40000", sub),
        b"a.b": (b"100644", blob),
        b"b": (b"100644", blob),
    }
    oid = write_object(bare, "tree", tree_object(folder))
    listing = "".join(
        f"{mode.decode().zfill(6)} {'tree' if mode == b'40000' else 'blob'} {o}\t{n.decode()}\n"
        for n, (mode, o) in folder.items()
    )
    made = git_bytes(bare, "mktree", stdin=listing.encode()).decode().strip()
    assert oid == made
    assert git(bare, "ls-tree", "--name-only", oid).split() == ["a.b", "a", "a0", "b"]
    assert (
        object_id("tree", b"") == EMPTY_TREE == git(bare, "hash-object", "-t", "tree", "/dev/null")
    )
    fsck(bare)


def test_a_commit_is_one_git_reads_with_its_parents_and_message(bare: Path) -> None:
    tree = write_object(bare, "tree", b"")
    first = write_object(
        bare, "commit", commit_object(tree, [], "ptm agent (s1) <a@s1.invalid>", "one")
    )
    second = write_object(
        bare,
        "commit",
        commit_object(tree, [first], "ptm agent (s1) <a@s1.invalid>", "two\n\nTask: t1\n"),
    )
    assert git(bare, "log", "--format=%s|%an|%ae|%P", second).splitlines() == [
        f"two|ptm agent (s1)|a@s1.invalid|{first}",
        "one|ptm agent (s1)|a@s1.invalid|",
    ]
    assert git(bare, "log", "-1", "--format=%(trailers:key=Task,valueonly)", second) == "t1"
    fsck(bare)


def test_changed_paths_rewrite_only_their_folders_and_drop_empty_ones(bare: Path) -> None:
    trees = JournalTrees(bare, GitRepo(bare))
    blob = write_object(bare, "blob", b"1\n")
    other = write_object(bare, "blob", b"2\n")
    root = trees.change(
        None,
        {"results/t1/s1/status.yaml": blob, "results/t1/s1/output/a.csv": blob, "README": other},
    )
    untouched = git(bare, "rev-parse", f"{root}:README")
    root = trees.change(root, {"results/t1/s1/output/b.csv": other}, ("results/t1/s1/output",))
    assert git(bare, "ls-tree", "-r", "--name-only", root).split() == [
        "README",
        "results/t1/s1/output/b.csv",
        "results/t1/s1/status.yaml",
    ]
    assert git(bare, "rev-parse", f"{root}:README") == untouched
    root = trees.change(root, {}, ("results/t1/s1/output", "results/t9/s1/output"))
    assert git(bare, "ls-tree", "-r", "--name-only", root).split() == [
        "README",
        "results/t1/s1/status.yaml",
    ]
    fsck(bare)


def test_a_folder_it_does_not_hold_is_read_from_git_once_with_its_size_checked(
    bare: Path,
) -> None:
    blob = write_object(bare, "blob", b"1\n")
    root = JournalTrees(bare, GitRepo(bare)).change(
        None, {f"results/t{n}/s1/status.yaml": blob for n in range(50)}
    )
    fresh = JournalTrees(bare, GitRepo(bare))  # a restarted agent: nothing held yet
    root = fresh.change(root, {"results/t50/s1/status.yaml": blob})
    assert len(git(bare, "ls-tree", "--name-only", f"{root}:results").split()) == 51
    small = JournalTrees(bare, GitRepo(bare), max_folder_bytes=1000)
    with pytest.raises(RegistryError, match=r"results: its listing is \d+ bytes, at most 1000"):
        small.change(root, {"results/t51/s1/status.yaml": blob})


def record(task: str, state: str = "accepted") -> StatusRecord:
    return StatusRecord(
        task=task,
        site="s1",
        state=state,  # type: ignore[arg-type]
        task_commit="a" * 40,
        received_at=utc_now_text(),
        agent="ptm test",
        submitted_by=None,
        image="ptm-test/busybox:latest",
    )


def test_the_ledgers_records_are_commits_git_fully_accepts(tmp_path: Path) -> None:
    registry = tmp_path / "registry.git"
    subprocess.run(["git", "init", "-q", "--bare", str(registry)], check=True)
    ledger = Ledger(tmp_path / "ledger", url=str(registry), site="s1", ssh_key=None, sign_key=None)
    ledger.ensure()
    outputs = tmp_path / "outputs"
    (outputs / "deep").mkdir(parents=True)
    (outputs / "deep" / "r.csv").write_text("a,b\n")
    ledger.record(record("t1"))
    ledger.record(record("t1", "completed"), log=b"hello\n", outputs=outputs)
    ledger.note("s1: agent alive", ["Ptm-Lease: renewed"])
    ledger.record(record("t1", "completed"), remove_outputs=True, message="t1: outputs withdrawn")
    ledger.record(record("t2"))
    journal = ledger.path
    fsck(journal)
    assert git(journal, "ls-tree", "-r", "--name-only", ledger.ref).split() == [
        "results/t1/s1/log.txt",
        "results/t1/s1/status.yaml",
        "results/t2/s1/status.yaml",
    ]
    subjects = git(journal, "log", "--format=%s", ledger.ref).splitlines()
    assert subjects == [
        "t2: accepted at s1",
        "t1: outputs withdrawn",
        "s1: agent alive",
        "t1: completed at s1",
        "t1: accepted at s1",
    ]
    withdrawn = git(journal, "rev-parse", f"{ledger.ref}~2")
    assert git(journal, "show", f"{withdrawn}:results/t1/s1/output/deep/r.csv") == "a,b"
    reopened = Ledger(journal, url=str(registry), site="s1", ssh_key=None, sign_key=None)
    status = reopened.status_of("t1")
    assert status is not None and status.state == "completed"
    assert reopened.push() and git(registry, "rev-parse", ledger.ref) == git(
        journal, "rev-parse", ledger.ref
    )


def test_many_records_are_a_commit_each_and_one_move_of_the_branch(tmp_path: Path) -> None:
    registry = tmp_path / "registry.git"
    subprocess.run(["git", "init", "-q", "--bare", str(registry)], check=True)
    ledger = Ledger(tmp_path / "ledger", url=str(registry), site="s1", ssh_key=None, sign_key=None)
    ledger.ensure()
    first = ledger.record(record("t0"))
    assert ledger.record_all([]) is None
    last = ledger.record_all([record(f"t{n}") for n in range(1, 4)])
    journal = ledger.path
    assert git(journal, "rev-parse", ledger.ref) == last
    assert git(journal, "log", "--format=%s", f"{first}..{last}").splitlines() == [
        "t3: accepted at s1",
        "t2: accepted at s1",
        "t1: accepted at s1",
    ]
    assert git(journal, "rev-list", "--count", f"{first}..{last}") == "3"
    assert git(journal, "diff", "--name-only", f"{last}~1", last) == "results/t3/s1/status.yaml"
    assert sorted(r.task for r in ledger.open_tasks()) == ["t0", "t1", "t2", "t3"]
    fsck(journal)


def test_a_signed_record_is_one_git_and_ptm_verify_as_the_site_keys(tmp_path: Path) -> None:
    key = make_signing_key(tmp_path / "keys", "hospital-a@example.org")
    signers = write_allowed_signers(tmp_path / "allowed_signers", key)
    registry = tmp_path / "registry.git"
    subprocess.run(["git", "init", "-q", "--bare", str(registry)], check=True)
    ledger = Ledger(
        tmp_path / "ledger", url=str(registry), site="s1", ssh_key=None, sign_key=key.private
    )
    ledger.ensure()
    ledger.record(record("t1"))
    last = ledger.record_all([record("t2"), record("t3")])
    assert last is not None
    journal = ledger.path
    shown = git(
        journal,
        "-c",
        f"gpg.ssh.allowedSignersFile={signers}",
        "log",
        "--format=%G?|%GS|%s",
        ledger.ref,
    )
    assert shown.splitlines() == [
        f"G|{key.principal}|t3: accepted at s1",
        f"G|{key.principal}|t2: accepted at s1",
        f"G|{key.principal}|t1: accepted at s1",
    ]
    (checked,) = verify_commits(GitRepo(journal), [(last, None)], signers)
    assert checked.status == "G" and checked.signer == key.principal
    fsck(journal)
    key.private.unlink()  # a missing key records nothing
    with pytest.raises(RegistryError, match="signing key"):
        ledger.record(record("t4"))
    assert git(journal, "rev-parse", ledger.ref) == last


def test_a_ref_moves_as_git_moves_it_or_not_at_all(bare: Path) -> None:
    tree = write_object(bare, "tree", b"")
    first = write_object(bare, "commit", commit_object(tree, [], "a <a@x.invalid>", "one"))
    second = write_object(bare, "commit", commit_object(tree, [first], "a <a@x.invalid>", "two"))
    ref = "refs/heads/results/s1"
    assert can_move_refs(GitRepo(bare)) and read_ref(bare, ref) is None
    move_ref(bare, ref, first, None)
    assert git(bare, "rev-parse", ref) == first
    git(bare, "pack-refs", "--all")  # now only in packed-refs
    assert not (bare / ref).exists() and read_ref(bare, ref) == first
    with pytest.raises(RegistryError, match="not at nothing"):
        move_ref(bare, ref, second, None)  # it is not where this writer left it
    lock = bare / f"{ref}.lock"
    assert not lock.exists() and git(bare, "rev-parse", ref) == first
    lock.write_text("")  # a git at work on it
    with pytest.raises(RegistryError, match="another git process"):
        move_ref(bare, ref, second, first)
    assert lock.read_text() == "" and git(bare, "rev-parse", ref) == first
    lock.unlink()
    move_ref(bare, ref, second, first)
    assert git(bare, "rev-parse", ref) == second
    fsck(bare)


def test_a_journal_with_reflogs_has_its_branch_moved_by_git(tmp_path: Path) -> None:
    registry = tmp_path / "registry.git"
    subprocess.run(["git", "init", "-q", "--bare", str(registry)], check=True)
    ledger = Ledger(tmp_path / "ledger", url=str(registry), site="s1", ssh_key=None, sign_key=None)
    ledger.ensure()
    git(ledger.path, "config", "core.logAllRefUpdates", "true")
    assert not can_move_refs(GitRepo(ledger.path))
    ledger.record(record("t1"))
    ledger.record(record("t1", "completed"))
    assert len(git(ledger.path, "reflog", "show", ledger.ref).splitlines()) == 2
    git(ledger.path, "config", "core.logAllRefUpdates", "false")
    git(ledger.path, "config", "extensions.refStorage", "reftable")
    assert not can_move_refs(GitRepo(ledger.path))  # a repository whose refs are no files


def test_a_listing_changed_entry_by_entry_is_the_tree_written_from_scratch(bare: Path) -> None:
    blob = write_object(bare, "blob", b"1\n")
    sub = write_object(bare, "tree", tree_object({b"f": (b"100644", blob)}))
    rng = random.Random(7)
    names = [b"a", b"a.b", b"a0", b"b", b"a-", b"az"]
    listing = Listing({}, [], [])
    expected: dict[bytes, tuple[bytes, str]] = {}
    for _ in range(300):  # files become folders and back, entries come and go
        name = rng.choice(names)
        if rng.random() < 0.3:
            listing.remove(name)
            expected.pop(name, None)
        else:
            entry = rng.choice([(b"100644", blob), (b"40000", sub)])
            listing.set(name, *entry)
            expected[name] = entry
        assert listing.data() == tree_object(expected)
    oid = write_object(bare, "tree", listing.data())
    assert set(git(bare, "ls-tree", "--name-only", oid).split()) == {n.decode() for n in expected}
    fsck(bare)
