"""ptm cancel: a signed commit of tasks/TASK/cancel.yaml, refused for unknown or cancelled tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptm.main import main
from ptm.schema import load_yaml_text
from tests.fixtures_git import SigningKey, clone, git, write_allowed_signers
from tests.test_status_cmd import add_task


@pytest.fixture
def submitted(registry_clone: Path) -> Path:
    git(registry_clone, "config", "user.email", "alice@uni.example")
    add_task(registry_clone, "t1", ("hospital-a", "hospital-b"))
    return registry_clone


def cancel(clone_dir: Path, *args: str) -> int:
    """``ptm cancel``; unsigned (the tests below are about the cancel, not its signature, which
    the tests after them are about) unless the test passes --sign-key."""
    signing = ["--allow-unsigned"] if "--sign-key" not in args else []
    return main(["cancel", *args, *signing, "--registry", str(clone_dir)])


def test_cancel_commits_a_signed_cancel_file(
    bare_registry: Path,
    submitted: Path,
    alice: SigningKey,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cancel(submitted, "t1", "--reason", "wrong column", "--sign-key", str(alice.private))
    assert code == 0
    assert "Cancelled task t1 (signed commit" in capsys.readouterr().out
    document = load_yaml_text(git(bare_registry, "show", "main:tasks/t1/cancel.yaml"), source="x")
    assert document == {"ptm": 1, "reason": "wrong column", "requested_by": "alice@uni.example"}
    changed = git(bare_registry, "show", "--name-only", "--format=", "main").splitlines()
    assert changed == ["tasks/t1/cancel.yaml"]
    signers = write_allowed_signers(tmp_path / "allowed", alice)
    shown = git(
        bare_registry,
        "-c",
        f"gpg.ssh.allowedSignersFile={signers}",
        "log",
        "-1",
        "--format=%G?%x20%GS%x20%s",
        "main",
    )
    assert shown == "G alice@uni.example Cancel task t1"
    assert main(["validate", str(submitted / "tasks" / "t1")]) == 0


def test_cancel_shows_in_status(submitted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cancel(submitted, "t1", "--reason", "superseded by t2") == 0
    capsys.readouterr()
    assert main(["status", "--registry", str(submitted)]) == 0
    assert "t1 [cancel requested]" in capsys.readouterr().out
    assert main(["status", "t1", "--json", "--registry", str(submitted)]) == 0
    cancelled = json.loads(capsys.readouterr().out)["cancelled"]
    assert cancelled == {"reason": "superseded by t2", "requested_by": "alice@uni.example"}


def test_an_unsigned_cancel_is_refused_where_sites_require_signatures(
    bare_registry: Path, submitted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = git(bare_registry, "for-each-ref")
    assert main(["cancel", "t1", "--registry", str(submitted)]) == 1
    err = capsys.readouterr().err
    assert "every site would ignore the cancel" in err
    assert "--sign-key KEY" in err and "--allow-unsigned" in err and "sign_key=" not in err
    assert git(bare_registry, "for-each-ref") == before  # nothing pushed
    assert git(submitted, "status", "--porcelain") == ""  # nothing written either
    assert not (submitted / "tasks" / "t1" / "cancel.yaml").exists()


def test_cancel_unsigned_on_purpose_warns(
    submitted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cancel(submitted, "t1") == 0  # with --allow-unsigned
    captured = capsys.readouterr()
    assert "not signed" in captured.err and "unsigned commit" in captured.out


def test_cancel_unknown_task_is_refused(
    bare_registry: Path, submitted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = git(bare_registry, "rev-parse", "main")
    assert cancel(submitted, "nope", "--reason", "x") == 1
    assert "no task 'nope' in the registry" in capsys.readouterr().err
    assert git(bare_registry, "rev-parse", "main") == before
    assert not (submitted / "tasks" / "nope").exists()


def test_cancel_twice_is_refused(
    bare_registry: Path, submitted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cancel(submitted, "t1", "--reason", "first") == 0
    before = git(bare_registry, "rev-parse", "main")
    capsys.readouterr()
    assert cancel(submitted, "t1", "--reason", "second") == 1
    assert "task t1 is cancelled already (reason: first)" in capsys.readouterr().err
    assert git(bare_registry, "rev-parse", "main") == before


def test_cancel_from_a_clone_that_is_behind(
    bare_registry: Path, submitted: Path, tmp_path: Path
) -> None:
    other = clone(bare_registry, tmp_path / "other")
    git(other, "config", "user.email", "bob@uni.example")
    add_task(submitted, "t2")  # pushed after 'other' was cloned
    assert cancel(other, "t2", "--reason", "not needed") == 0
    assert "bob@uni.example" in git(bare_registry, "show", "main:tasks/t2/cancel.yaml")
    assert git(bare_registry, "ls-tree", "--name-only", "main:tasks/t2").split() == [
        "cancel.yaml",
        "task.yaml",
    ]


def test_cancel_refuses_hostile_ids(submitted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cancel(submitted, "../t1", "--reason", "x") == 1
    assert "not a valid task id" in capsys.readouterr().err


def test_cancel_refuses_empty_reason(
    bare_registry: Path, submitted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cancel(submitted, "t1", "--reason", "") == 1
    assert "reason" in capsys.readouterr().err
    assert git(bare_registry, "ls-tree", "--name-only", "main:tasks/t1").split() == ["task.yaml"]


def test_cancel_json(submitted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cancel(submitted, "t1", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["task_id"] == "t1" and document["signed"] is False
    assert document["requested_by"] == "alice@uni.example" and len(document["commit"]) == 40


def test_a_huge_crafted_cancel_file_is_not_read_to_quote_it(
    bare_registry: Path, submitted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = "ptm: 1\nreason: " + "x" * (2 * 1024 * 1024) + "\n"
    (submitted / "tasks" / "t1" / "cancel.yaml").write_text(huge)
    git(submitted, "add", "tasks/t1/cancel.yaml")
    git(submitted, "commit", "-q", "-m", "huge cancel")
    git(submitted, "push", "-q", "origin", "HEAD:main")
    capsys.readouterr()
    assert cancel(submitted, "t1", "--reason", "again") == 1
    err = capsys.readouterr().err
    assert "task t1 is cancelled already" in err and "xxxx" not in err
