from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ptm.main import main
from tests.fixtures_git import clone, git


def test_init_bare_has_template_on_main(tmp_path: Path) -> None:
    bare = tmp_path / "r.git"
    assert main(["registry", "init", str(bare), "--bare"]) == 0
    assert git(bare, "rev-parse", "--is-bare-repository") == "true"
    files = git(bare, "ls-tree", "-r", "--name-only", "main").splitlines()
    assert "registry.yaml" in files
    assert "tasks/example/task.yaml" in files
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
