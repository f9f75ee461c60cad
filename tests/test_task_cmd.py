from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ptm.errors import PtmError
from ptm.main import main
from ptm.registry import DEFAULT_BRANCH
from ptm.submission import TaskDraft, submit_task, write_task
from tests.fixtures_git import SigningKey, clone, git, write_allowed_signers


def new_task(clone_dir: Path, task_id: str, *extra: str) -> int:
    return main(
        [
            "task",
            "new",
            task_id,
            "--image",
            "ptm-test/busybox:latest",
            "--site",
            "hospital-a",
            "--registry",
            str(clone_dir),
            *extra,
        ]
    )


def test_new_writes_valid_task(registry_clone: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("column: age\n")
    data = tmp_path / "codes.csv"
    data.write_text("a,b\n")
    assert (
        new_task(
            registry_clone,
            "age-stats",
            "--config",
            str(config),
            "--file",
            str(data),
            "--timeout",
            "60",
            "--command",
            "sh -c 'echo hi'",
        )
        == 0
    )
    task_dir = registry_clone / "tasks" / "age-stats"
    text = (task_dir / "task.yaml").read_text()
    assert "column: age" in text
    assert "- echo hi" in text
    assert (task_dir / "files" / "codes.csv").read_text() == "a,b\n"
    assert main(["validate", str(task_dir)]) == 0


def test_new_refuses_existing_id(registry_clone: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert new_task(registry_clone, "first") == 0
    assert new_task(registry_clone, "first") == 1
    assert "exists already" in capsys.readouterr().err


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "/abs", "Upper", "\u0430ge", "x" * 64, "."])
def test_new_refuses_hostile_ids(
    registry_clone: Path, bad_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (registry_clone / "tasks").mkdir()
    assert new_task(registry_clone, bad_id) == 1
    assert "task id" in capsys.readouterr().err
    assert list((registry_clone / "tasks").iterdir()) == []
    assert not (registry_clone.parent / "x").exists()


def test_new_refuses_invalid_task_and_writes_nothing(
    registry_clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert new_task(registry_clone, "slow", "--timeout", "0") == 1
    err = capsys.readouterr().err
    assert "tasks/slow/task.yaml: timeout:" in err
    assert not (registry_clone / "tasks" / "slow").exists()


def test_submit_signed_lands_on_remote(
    bare_registry: Path, registry_clone: Path, alice: SigningKey, tmp_path: Path
) -> None:
    assert new_task(registry_clone, "age-stats") == 0
    assert (
        main(
            [
                "task",
                "submit",
                "age-stats",
                "--sign-key",
                str(alice.private),
                "--registry",
                str(registry_clone),
            ]
        )
        == 0
    )
    assert git(bare_registry, "cat-file", "-e", "main:tasks/age-stats/task.yaml") == ""
    signers = write_allowed_signers(tmp_path / "allowed", alice)
    shown = git(
        bare_registry,
        "-c",
        f"gpg.ssh.allowedSignersFile={signers}",
        "log",
        "-1",
        "--format=%G?%x20%GS",
        "main",
    )
    assert shown == "G alice@uni.example"


def test_submit_uses_gits_own_signing_config(
    bare_registry: Path, registry_clone: Path, alice: SigningKey, tmp_path: Path
) -> None:
    git(registry_clone, "config", "gpg.format", "ssh")
    git(registry_clone, "config", "user.signingkey", str(alice.private))
    assert new_task(registry_clone, "t1") == 0
    assert main(["task", "submit", "t1", "--registry", str(registry_clone)]) == 0
    signers = write_allowed_signers(tmp_path / "allowed", alice)
    shown = git(
        bare_registry,
        "-c",
        f"gpg.ssh.allowedSignersFile={signers}",
        "log",
        "-1",
        "--format=%G?%x20%GS",
        "main",
    )
    assert shown == "G alice@uni.example"


def test_submit_refuses_unsigned_when_the_registry_requires_signatures(
    bare_registry: Path, registry_clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "require_signed_tasks: true" in (registry_clone / "registry.yaml").read_text()
    assert new_task(registry_clone, "t1") == 0
    assert main(["task", "submit", "t1", "--registry", str(registry_clone)]) == 1
    err = capsys.readouterr().err
    assert "not submitted" in err and "require_signed_tasks" in err
    assert "git config --global gpg.format ssh" in err and "--allow-unsigned" in err
    assert git(bare_registry, "ls-tree", "-r", "--name-only", "main", "tasks/") == ""
    assert git(registry_clone, "status", "--porcelain") == "?? tasks/"
    # the id is not used up: signing set up, the same task goes through
    assert (
        main(["task", "submit", "t1", "--allow-unsigned", "--registry", str(registry_clone)]) == 0
    )
    assert "not signed" in capsys.readouterr().err
    assert (
        git(bare_registry, "ls-tree", "-r", "--name-only", "main", "tasks/") == "tasks/t1/task.yaml"
    )


def test_submit_unsigned_only_warns_when_the_registry_does_not_require_signatures(
    registry_clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry_yaml = registry_clone / "registry.yaml"
    registry_yaml.write_text(registry_yaml.read_text().replace("tasks: true", "tasks: false"))
    git(registry_clone, "commit", "-q", "-am", "sites accept unsigned tasks")
    assert new_task(registry_clone, "t1") == 0
    assert main(["task", "submit", "t1", "--registry", str(registry_clone)]) == 0
    assert "not signed" in capsys.readouterr().err


def test_submit_commits_only_the_task(bare_registry: Path, registry_clone: Path) -> None:
    (registry_clone / "README.md").write_text("local scribbles\n")
    assert new_task(registry_clone, "t1") == 0
    assert (
        main(["task", "submit", "t1", "--allow-unsigned", "--registry", str(registry_clone)]) == 0
    )
    changed = git(bare_registry, "show", "--name-only", "--format=", "main").splitlines()
    assert changed == ["tasks/t1/task.yaml"]


def test_submit_refuses_id_taken_on_remote(bare_registry: Path, tmp_path: Path) -> None:
    first = clone(bare_registry, tmp_path / "one")
    second = clone(bare_registry, tmp_path / "two")
    write_task(first, TaskDraft("same", "img:1", ("hospital-a",)))
    submit_task(first, "same", branch=DEFAULT_BRANCH, sign_key=None)
    write_task(second, TaskDraft("same", "img:2", ("hospital-a",)))
    with pytest.raises(PtmError, match="in the registry already"):
        submit_task(second, "same", branch=DEFAULT_BRANCH, sign_key=None)
    assert "img:1" in git(bare_registry, "show", "main:tasks/same/task.yaml")


def test_submit_refuses_invalid_task(
    registry_clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task_dir = registry_clone / "tasks" / "broken"
    task_dir.mkdir(parents=True)
    (task_dir / "task.yaml").write_text("ptm: 1\nimage: x:1\nsites: [a]\nimgae: typo\n")
    head = git(registry_clone, "rev-parse", "HEAD")
    assert main(["task", "submit", "broken", "--registry", str(registry_clone)]) == 1
    err = capsys.readouterr().err
    assert "tasks/broken/task.yaml" in err and "imgae" in err and "additionalProperties" in err
    assert git(registry_clone, "rev-parse", "HEAD") == head


def test_two_researchers_submit_at_the_same_moment(
    bare_registry: Path, tmp_path: Path, alice: SigningKey, mallory: SigningKey
) -> None:
    clones = [clone(bare_registry, tmp_path / f"c{i}") for i in range(2)]
    keys = [alice, mallory]
    for i, work in enumerate(clones):
        write_task(work, TaskDraft(f"task-{i}", "img:1", ("hospital-a",)))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def submit(i: int) -> None:
        barrier.wait()
        try:
            submit_task(clones[i], f"task-{i}", branch=DEFAULT_BRANCH, sign_key=keys[i].private)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    landed = git(bare_registry, "ls-tree", "--name-only", "main:tasks").split()
    assert {"task-0", "task-1"} <= set(landed)
    signers = write_allowed_signers(tmp_path / "allowed", alice, mallory)
    statuses = git(
        bare_registry,
        "-c",
        f"gpg.ssh.allowedSignersFile={signers}",
        "log",
        "-2",
        "--format=%G?",
        "main",
    ).split()
    assert statuses == ["G", "G"]
