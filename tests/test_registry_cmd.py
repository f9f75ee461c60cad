from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ptm.main import main
from tests.fixtures_git import SigningKey, clone, git, write_allowed_signers


def test_init_bare_has_template_on_main(tmp_path: Path) -> None:
    bare = tmp_path / "r.git"
    assert main(["registry", "init", str(bare), "--bare"]) == 0
    assert git(bare, "rev-parse", "--is-bare-repository") == "true"
    files = git(bare, "ls-tree", "-r", "--name-only", "main").splitlines()
    assert "registry.yaml" in files
    assert "example-task/task.yaml" in files
    assert not [f for f in files if f.startswith("tasks/")]  # no site would ever run it
    assert ".github/workflows/ptm-validate.yml" in files
    assert ".gitlab-ci.yml" in files
    assert not [f for f in files if f.endswith((".py", ".pyc"))]


def test_init_worktree_then_template_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r"
    assert main(["registry", "init", str(path)]) == 0
    assert (path / ".git").is_dir()
    assert main(["validate", str(path)]) == 0
    assert "registry is valid" in capsys.readouterr().out


def test_init_refuses_non_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "precious.txt").write_text("keep me")
    assert main(["registry", "init", str(tmp_path / "r"), "--bare"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["precious.txt"]


def test_cloned_registry_validates(bare_registry: Path, tmp_path: Path) -> None:
    work = clone(bare_registry, tmp_path / "c")
    assert main(["validate", str(work)]) == 0


def test_version_and_module_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ptm", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("ptm ")


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["task", "new"])
    assert exited.value.code == 2


def test_init_signs_the_first_commit_with_a_key(tmp_path: Path, alice: SigningKey) -> None:
    bare = tmp_path / "signed.git"
    assert main(["registry", "init", str(bare), "--bare", "--sign-key", str(alice.private)]) == 0
    signers = write_allowed_signers(tmp_path / "signers", alice)
    shown = git(
        bare, "-c", f"gpg.ssh.allowedSignersFile={signers}", "log", "-1", "--format=%G? %GS", "main"
    )
    assert shown == "G alice@uni.example"


def test_starting_ptm_does_not_import_docker_or_paramiko() -> None:
    probe = "import sys, ptm.main; print(sorted({'docker', 'paramiko'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
