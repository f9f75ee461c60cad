"""ptm.treecheck against crafted trees in a real repository: every hostile shape is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptm import process
from ptm.errors import CommandTimedOut
from ptm.gitrepo import GitRepo
from ptm.tree_entries import Caps, entry_name_problem, parse_tree_object
from ptm.treecheck import TreeRefused, checked_tree, read_texts, write_tree
from tests import crafted
from tests.crafted import EXEC, FILE, GITLINK, LINK, TREE


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def problems_of(repo: Path, tree_oid: str, caps: Caps | None = None) -> list[str]:
    found = checked_tree(GitRepo(repo), tree_oid, where="tasks/t1", caps=caps or Caps())
    return [f"{p.path} [{p.rule}]" for p in found.problems]


HOSTILE_NAMES = [
    b".",
    b"..",
    b".git",
    b".GIT",
    b".Git",
    b".git ",
    b".git.",
    b"git~1",
    b"",
    b"a/b",
    b"new\nline",
    b"tab\there",
    b"esc\x1b[31m",
    b"back\\slash",
    b"\xff\xfe",
    b"-rf",
    b".gitmodules",
    b"zero\xe2\x80\x8bwidth",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=[repr(n) for n in HOSTILE_NAMES])
def test_hostile_names_are_refused_and_nothing_else(repo: Path, name: bytes) -> None:
    good = crafted.blob(repo, b"ptm: 1\n")
    bad = crafted.blob(repo, b"evil")
    tree = crafted.tree(repo, [(FILE, b"task.yaml", good), (FILE, name, bad)])
    found = checked_tree(GitRepo(repo), tree, where="tasks/t1")
    assert [e.path for e in found.entries] == ["task.yaml"]
    assert len(found.problems) == 1
    assert found.problems[0].rule == "name"
    assert found.problems[0].path.startswith("tasks/t1/")
    assert "\n" not in str(found.problems[0]) and "\x1b" not in str(found.problems[0])


@pytest.mark.parametrize(("mode", "kind"), [(LINK, "symbolic link"), (GITLINK, "gitlink")])
def test_links_and_gitlinks_are_refused(repo: Path, mode: bytes, kind: str) -> None:
    target = crafted.blob(repo, b"/etc/passwd")
    oid = target if mode == LINK else "1" * 40
    tree = crafted.tree(repo, [(mode, b"task.yaml", oid)])
    found = checked_tree(GitRepo(repo), tree, where="tasks/t1")
    assert found.entries == ()
    assert found.problems[0].rule == "mode"
    assert kind in found.problems[0].message


def test_duplicates_are_refused_both(repo: Path) -> None:
    one = crafted.blob(repo, b"one")
    link = crafted.blob(repo, b"/etc")
    sub = crafted.tree(repo, [(FILE, b"x", one)])
    tree = crafted.tree(repo, [(LINK, b"x", link), (TREE, b"x", sub), (FILE, b"task.yaml", one)])
    found = checked_tree(GitRepo(repo), tree, where="tasks/t1")
    assert [e.path for e in found.entries] == ["task.yaml"]
    assert sorted(p.rule for p in found.problems) == ["duplicate", "duplicate"]


def test_names_differing_only_in_case_are_duplicates(repo: Path) -> None:
    one = crafted.blob(repo, b"one")
    tree = crafted.tree(repo, [(FILE, b"Data.csv", one), (FILE, b"data.csv", one)])
    assert sorted(problems_of(repo, tree)) == [
        "tasks/t1/Data.csv [duplicate]",
        "tasks/t1/data.csv [duplicate]",
    ]


def test_blob_sizes_are_checked_before_reading(repo: Path) -> None:
    big = crafted.big_blob(repo, 300 * 1024**2)
    tree = crafted.tree(repo, [(FILE, b"task.yaml", big)])
    found = checked_tree(GitRepo(repo), tree, where="tasks/t1")
    assert found.entries == ()
    assert found.problems[0].rule == "max-bytes"
    assert str(300 * 1024**2) in found.problems[0].message


def test_total_bytes_cap(repo: Path) -> None:
    blobs = [crafted.blob(repo, bytes([i]) * 600) for i in range(3)]
    tree = crafted.tree(repo, [(FILE, f"f{i}".encode(), b) for i, b in enumerate(blobs)])
    caps = Caps(max_total_bytes=1000)
    assert problems_of(repo, tree, caps) == [
        "tasks/t1/f1 [max-total-bytes]",
        "tasks/t1/f2 [max-total-bytes]",
    ]


def test_entry_and_depth_caps(repo: Path) -> None:
    one = crafted.blob(repo, b"1")
    wide = crafted.tree(repo, [(FILE, f"f{i:04d}".encode(), one) for i in range(50)])
    assert problems_of(repo, wide, Caps(max_entries=10)) == ["tasks/t1/f0010 [max-entries]"]
    deep = one
    mode = FILE
    for level in range(30):
        deep = crafted.tree(repo, [(mode, f"d{level}".encode(), deep)])
        mode = TREE
    found = checked_tree(GitRepo(repo), deep, where="tasks/t1", caps=Caps(max_depth=5))
    assert [p.rule for p in found.problems] == ["max-depth"]
    assert max(e.path.count("/") for e in found.entries) == 4


def test_wrong_object_types_are_refused(repo: Path) -> None:
    one = crafted.blob(repo, b"1")
    as_tree = crafted.tree(repo, [(TREE, b"files", one)])  # a blob where a folder should be
    assert problems_of(repo, as_tree) == ["tasks/t1/files [missing]"]
    with pytest.raises(TreeRefused, match="not a folder"):
        checked_tree(GitRepo(repo), one, where="tasks/t1")


def test_a_sound_tree_reads_and_writes_exactly(repo: Path, tmp_path: Path) -> None:
    tree = crafted.tree_of(
        repo, {"task.yaml": b"ptm: 1\n", "files/a/b.txt": b"bee", "files/c": b"see"}
    )
    git = GitRepo(repo)
    found = checked_tree(git, tree, where="tasks/t1")
    assert found.ok
    assert [e.path for e in found.entries] == [
        "files",
        "files/a",
        "files/a/b.txt",
        "files/c",
        "task.yaml",
    ]
    assert read_texts(git, [found.get("task.yaml")]) == {"task.yaml": b"ptm: 1\n"}  # type: ignore[list-item]
    dest = tmp_path / "out"
    write_tree(git, found.under("files"), dest)
    assert (dest / "a" / "b.txt").read_bytes() == b"bee"
    assert (dest / "c").read_bytes() == b"see"
    assert (dest / "c").stat().st_mode & 0o777 == 0o644


def test_write_tree_never_writes_into_an_existing_folder(repo: Path, tmp_path: Path) -> None:
    tree = crafted.tree_of(repo, {"a": b"1"})
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(FileExistsError):
        write_tree(GitRepo(repo), checked_tree(GitRepo(repo), tree, where="x"), dest)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        write_tree(GitRepo(repo), checked_tree(GitRepo(repo), tree, where="x"), link)
    assert not (tmp_path / "elsewhere").exists()


def test_executable_bit_is_kept_and_nothing_else(repo: Path, tmp_path: Path) -> None:
    script = crafted.blob(repo, b"#!/bin/sh\n")
    tree = crafted.tree(repo, [(EXEC, b"run.sh", script)])
    dest = tmp_path / "out"
    write_tree(GitRepo(repo), checked_tree(GitRepo(repo), tree, where="x"), dest)
    assert (dest / "run.sh").stat().st_mode & 0o7777 == 0o755


def test_parse_tree_object_keeps_exact_bytes() -> None:
    raw = b"100644 a\nb\0" + b"\x01" * 20 + b"40000 \xff\0" + b"\x02" * 20
    entries = parse_tree_object(raw)
    assert [(e.mode, e.name) for e in entries] == [(b"100644", b"a\nb"), (b"40000", b"\xff")]
    assert entries[0].oid == "01" * 20
    with pytest.raises(ValueError):
        parse_tree_object(b"100644 a\0" + b"\x01" * 5)


def test_entry_name_rules() -> None:
    assert entry_name_problem(b"summary.csv") is None
    assert entry_name_problem(b"task.yaml") is None
    for name in HOSTILE_NAMES:
        assert entry_name_problem(name) is not None, name


def test_a_folder_out_of_git_order_is_a_problem(repo: Path) -> None:
    one = crafted.blob(repo, b"1")
    tree = crafted.tree(repo, [(FILE, b"b", one), (FILE, b"a", one)], keep_order=True)
    assert problems_of(repo, tree) == ["tasks/t1 [order]"]
    sorted_tree = crafted.tree(repo, [(FILE, b"b", one), (FILE, b"a", one)])
    assert problems_of(repo, sorted_tree) == []
    # git sorts a folder as if its name ended in '/': 'a.txt' comes before folder 'a'
    sub = crafted.tree(repo, [(FILE, b"x", one)])
    canonical = crafted.tree(repo, [(FILE, b"a.txt", one), (TREE, b"a", sub)])
    assert problems_of(repo, canonical) == []


def test_a_walk_is_one_git_process_however_deep(repo: Path, tmp_path: Path) -> None:
    files = {"/".join(f"d{n}" for n in range(depth)) + "/f.txt": b"x" for depth in range(1, 9)}
    tree = crafted.tree_of(repo, files)
    trace = tmp_path / "trace.txt"
    found = checked_tree(GitRepo(repo, env={"GIT_TRACE": str(trace)}), tree, where="x")
    assert len(found.files) == 8 and found.ok
    started = [line for line in trace.read_text().splitlines() if "built-in: git" in line]
    assert len(started) == 1 and "cat-file --batch-command" in started[0], started


def test_a_session_that_stops_answering_is_stopped_at_its_deadline() -> None:
    began = time.monotonic()
    with process.Session(["sleep", "30"], cwd=None, env=dict(os.environ), timeout=0.5) as quiet:
        with pytest.raises(CommandTimedOut):
            quiet.read_line()
        pid = quiet.pid
    assert time.monotonic() - began < 5
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_subtree_named_many_times_is_read_only_up_to_the_total_cap(repo: Path) -> None:
    """A crafted folder naming one big subtree again and again: each listing is under the
    per-tree cap, but reading them all would hold their sum in memory at once."""
    one = crafted.blob(repo, b"1")
    names = [f"{'x' * 40}{i:05d}".encode() for i in range(1000)]
    big = crafted.tree(repo, [(FILE, name, one) for name in names])
    size = int(
        subprocess.run(
            ["git", "cat-file", "-s", big], cwd=repo, capture_output=True, text=True, check=True
        ).stdout
    )
    root = crafted.tree(repo, [(TREE, f"d{i:03d}".encode(), big) for i in range(200)])
    cap = 10 * size + size // 2
    found = checked_tree(
        GitRepo(repo), root, where="r", caps=Caps(max_entries=10**6, max_total_bytes=cap)
    )
    over = [p for p in found.problems if "listings read over" in p.message]
    assert [p.rule for p in over] == ["max-bytes"] * (200 - 10)
    assert sum(1 for e in found.entries if not e.is_dir) == 10 * len(names)


def test_a_listing_of_bad_names_stops_at_the_entry_cap(repo: Path) -> None:
    one = crafted.blob(repo, b"1")
    bad = crafted.tree(repo, [(FILE, f"..{i:05d}\n".encode(), one) for i in range(5000)])
    found = checked_tree(GitRepo(repo), bad, where="r", caps=Caps(max_entries=100))
    assert len(found.problems) == 101
    assert found.problems[-1].rule == "max-entries" and found.entries == ()


def test_a_tree_of_more_folders_than_open_files_allowed_is_written(
    repo: Path, tmp_path: Path
) -> None:
    files = {f"d{n:03d}/sub/f.txt": str(n).encode() for n in range(300)}
    tree = crafted.tree_of(repo, files)
    dest = tmp_path / "out"
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from ptm.gitrepo import GitRepo\n"
        "from ptm.treecheck import checked_tree, write_tree\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))\n"
        "git = GitRepo(Path(sys.argv[1]))\n"
        "write_tree(git, checked_tree(git, sys.argv[2], where='x'), Path(sys.argv[3]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(repo), tree, str(dest)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (dest / "d299" / "sub" / "f.txt").read_bytes() == b"299"
    assert len(list(dest.iterdir())) == 300
    assert (dest / "d000" / "sub").stat().st_mode & 0o777 == 0o755
