"""``ptm validate``: the sites a registry lists, staged trees for pre-commit, signers for audits."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from ptm.errors import InvalidDocument
from ptm.main import main
from ptm.submission import TaskDraft, submit_task, write_task
from tests.fixtures_git import SigningKey, git


def add_site(work: Path, name: str, key: SigningKey | None = None) -> None:
    lines = ["ptm: 1", f"name: {name}", f"contact: it@{name}.example"]
    if key is not None:
        lines += [f"principal: {key.principal}", f"public_key: {key.public_line} comment"]
    (work / "sites").mkdir(exist_ok=True)
    (work / "sites" / f"{name}.yaml").write_text("\n".join(lines) + "\n")


def task(work: Path, task_id: str, *sites: str) -> Path:
    return write_task(work, TaskDraft(task_id, "ptm-test/busybox:latest", sites))


def validate(*args: str) -> int:
    return main(["validate", *args])


def test_a_task_naming_an_unlisted_site_is_reported_with_the_closest_name(
    registry_clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_site(registry_clone, "hospital-a")
    add_site(registry_clone, "hospital-b")
    task(registry_clone, "good", "hospital-a", "hospital-b")
    task(registry_clone, "every", "*")
    task(registry_clone, "typo", "hospital-a", "hosptial-b")
    assert validate(str(registry_clone)) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "tasks/typo/task.yaml: sites[1]: 'hosptial-b' is not a site of this registry "
        "(sites/: hospital-a, hospital-b); did you mean 'hospital-b'? [known-site]",
        "1 problem(s).",
    ]
    assert validate(str(registry_clone / "tasks" / "typo")) == 1  # one task folder, too
    assert "did you mean 'hospital-b'?" in capsys.readouterr().out
    assert validate(str(registry_clone / "tasks" / "good")) == 0


def test_a_registry_that_lists_no_site_yet_checks_no_names(
    registry_clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task(registry_clone, "t1", "anywhere")
    assert validate(str(registry_clone)) == 0
    assert "registry is valid" in capsys.readouterr().out


def test_submit_refuses_an_unlisted_site(
    bare_registry: Path, registry_clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_site(registry_clone, "hospital-a")
    git(registry_clone, "add", "sites")
    git(registry_clone, "commit", "-q", "-m", "list hospital-a")
    task(registry_clone, "t1", "hospitel-a")
    with pytest.raises(InvalidDocument, match="did you mean 'hospital-a'"):
        submit_task(registry_clone, "t1", branch="main", sign_key=None)
    assert "tasks/" not in git(bare_registry, "ls-tree", "-r", "--name-only", "main")


def test_broken_site_files_are_reported(
    registry_clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_site(registry_clone, "hospital-a")
    (registry_clone / "sites" / "hospital-b.yaml").write_text("ptm: 1\nname: hospital-a\n")
    (registry_clone / "sites" / "hospital-c.yaml").write_text("ptm: 1\nname: c\nkey: x\n")
    assert validate(str(registry_clone)) == 1
    out = capsys.readouterr().out
    assert "sites/hospital-b.yaml: name: is 'hospital-a', but the file is hospital-b.yaml" in out
    assert "sites/hospital-c.yaml: (top level): unknown key 'key'" in out


def test_signers_lists_each_sites_key_for_auditors(
    registry_clone: Path, alice: SigningKey, capsys: pytest.CaptureFixture[str]
) -> None:
    add_site(registry_clone, "hospital-a", alice)
    add_site(registry_clone, "hospital-b")  # no key: nothing to list
    capsys.readouterr()
    assert main(["registry", "signers", "--registry", str(registry_clone)]) == 0
    assert capsys.readouterr().out == f'{alice.principal} namespaces="git" {alice.public_line}\n'


def test_json_and_several_paths(registry_clone: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = task(registry_clone, "t1", "a"), task(registry_clone, "t2", "b")
    assert validate("--json", str(first)) == 0
    assert json.loads(capsys.readouterr().out) == {
        "path": str(first),
        "kind": "task",
        "problems": [],
    }
    assert validate(str(first / "task.yaml"), str(second)) == 0
    assert capsys.readouterr().out.startswith("2 checked (")


# -- what pre-commit runs --------------------------------------------------------------------


def staged(work: Path, *files: str) -> int:
    cwd = Path.cwd()
    os.chdir(work)
    try:
        return validate("--staged", *files)
    finally:
        os.chdir(cwd)


def test_staged_checks_the_index_not_untracked_drafts(
    registry_clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task(registry_clone, "ready", "hospital-a")
    git(registry_clone, "add", "tasks/ready")
    draft = registry_clone / "tasks" / "draft"
    draft.mkdir()
    (draft / "task.yaml").write_text("ptm: 1\nimgae: half-written\n")  # untracked, broken
    assert validate(str(registry_clone)) == 1  # the working tree has the broken draft
    capsys.readouterr()
    assert staged(registry_clone, "tasks/ready/task.yaml") == 0
    assert staged(registry_clone) == 0  # the whole staged tree, drafts left out
    # an edit after staging is not what gets committed: the staged version is checked
    (registry_clone / "tasks" / "ready" / "task.yaml").write_text("broken: [\n")
    assert staged(registry_clone, "tasks/ready/task.yaml") == 0
    git(registry_clone, "add", "tasks/ready")
    capsys.readouterr()
    assert staged(registry_clone, "tasks/ready/task.yaml") == 1
    assert "tasks/ready/task.yaml" in capsys.readouterr().out


def test_staged_registry_files_check_every_task_against_the_sites(
    registry_clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task(registry_clone, "t1", "hospital-b")
    git(registry_clone, "add", "tasks")
    git(registry_clone, "commit", "-q", "-m", "t1")
    add_site(registry_clone, "hospital-a")
    git(registry_clone, "add", "sites")
    assert staged(registry_clone, "sites/hospital-a.yaml") == 1
    assert "'hospital-b' is not a site of this registry" in capsys.readouterr().out


def test_the_templates_hook_runs_on_the_staged_files_it_selects(
    registry_clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hook as pre-commit runs it: its entry, plus the staged files its pattern selects."""
    (hook,) = yaml.safe_load((registry_clone / ".pre-commit-config.yaml").read_text())["repos"][0][
        "hooks"
    ]
    assert hook["language"] == "system" and hook["pass_filenames"] is True
    task(registry_clone, "t1", "hospital-a")
    (registry_clone / "notes.txt").write_text("not a registry file\n")
    git(registry_clone, "add", "tasks", "notes.txt")
    names = git(registry_clone, "diff", "--cached", "--name-only").splitlines()
    selected = [name for name in names if re.search(hook["files"], name)]
    assert selected == ["tasks/t1/task.yaml"]
    command, *options = shlex.split(hook["entry"])
    assert command == "ptm"
    assert staged(registry_clone, *[o for o in options if o != "--staged"], *selected) == 0
    assert capsys.readouterr().out == "tasks/t1: task is valid.\n"
