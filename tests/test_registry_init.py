"""``ptm registry init``: a consistent registry on any branch, pinned CI, signed or warned about."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ptm import __version__
from ptm.commands import COMMANDS
from ptm.main import build_parser, main
from ptm.registry import template_dir
from ptm.submission import TaskDraft, submit_task, write_task
from tests.agent_support import TEST_IMAGE, remote_status, write_site_config
from tests.fixtures_git import SigningKey, git
from tests.readme_session import Step, run_step, section, sessions

BRANCH = "studies/v1"
CI_FILES = (".github/workflows/ptm-validate.yml", ".gitlab-ci.yml")


def init(*args: str) -> int:
    return main(["registry", "init", *args])


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A CI step as the CI runs it: a shell line, with this ptm first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        command,
        shell=True,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": path},
    )


def ci_commands(work: Path) -> list[str]:
    workflow = yaml.safe_load((work / CI_FILES[0]).read_text())
    steps = workflow["jobs"]["validate"]["steps"]
    gitlab = yaml.safe_load((work / CI_FILES[1]).read_text())
    return [s["run"] for s in steps if "ptm" in s.get("run", "").split()[:1]] + [
        line for line in gitlab["ptm-validate"]["script"] if line.startswith("ptm ")
    ]


def test_every_file_names_the_branch_given(tmp_path: Path) -> None:
    work = tmp_path / "r"
    assert init(str(work), "--branch", BRANCH) == 0
    assert git(work, "branch", "--show-current") == BRANCH
    assert yaml.safe_load((work / "registry.yaml").read_text())["tasks_branch"] == BRANCH
    workflow = yaml.safe_load((work / CI_FILES[0]).read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key 'on' as true
    assert triggers["pull_request"]["branches"] == [BRANCH]
    assert triggers["push"]["branches"] == [BRANCH]
    rules = yaml.safe_load((work / CI_FILES[1]).read_text())["ptm-validate"]["rules"]
    assert all(f'== "{BRANCH}"' in rule["if"] for rule in rules)
    assert f"**`{BRANCH}`**" in (work / "README.md").read_text()
    for path in work.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            text = path.read_text()
            assert "@TASKS_BRANCH@" not in text and "@PTM_REQUIREMENT@" not in text, path
    assert "main" not in (work / CI_FILES[0]).read_text() + (work / CI_FILES[1]).read_text()


def test_ci_installs_a_pinned_ptm_with_least_privilege(tmp_path: Path) -> None:
    work = tmp_path / "r"
    assert init(str(work)) == 0
    workflow = yaml.safe_load((work / CI_FILES[0]).read_text())
    pinned = f"ptm-health-train=={__version__}"
    assert workflow["env"]["PTM_REQUIREMENT"] == pinned
    assert workflow["permissions"] == {"contents": "read"}
    job = workflow["jobs"]["validate"]
    assert 0 < job["timeout-minutes"] <= 30
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert runs == ['pip install "$PTM_REQUIREMENT"', "ptm validate ."]
    gitlab = yaml.safe_load((work / CI_FILES[1]).read_text())
    assert gitlab["variables"]["PTM_REQUIREMENT"] == pinned
    assert 'pip install "$PTM_REQUIREMENT"' in gitlab["ptm-validate"]["script"]
    assert gitlab["ptm-validate"]["timeout"] == "10 minutes"
    # never an unpinned name, anywhere
    for name in (*CI_FILES, "README.md", ".pre-commit-config.yaml"):
        text = (work / name).read_text()
        assert "pip install ptm" not in text and "pip install ptm-health-train\n" not in text


def test_ci_requirement_can_point_at_a_tag_the_maintainer_controls(tmp_path: Path) -> None:
    url = "git+https://git.example.org/consortium/ptm.git@v0.1.0"
    assert init(str(tmp_path / "r"), "--ptm-requirement", url) == 0
    workflow = yaml.safe_load((tmp_path / "r" / CI_FILES[0]).read_text())
    assert workflow["env"]["PTM_REQUIREMENT"] == url


@pytest.mark.parametrize(
    ("option", "value"), [("--branch", ".x"), ("--branch", "a..b"), ("--ptm-requirement", "x\ny")]
)
def test_unusable_values_are_refused_before_anything_is_made(
    tmp_path: Path, option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(str(tmp_path / "r"), f"{option}={value}") == 1
    assert option in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unsigned_init_says_so_and_what_an_audit_sees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(str(tmp_path / "r.git"), "--bare") == 0
    out, err = capsys.readouterr()
    assert "unsigned first commit" in out
    assert "not signed" in err and "git log --show-signature" in err and "ptm audit" in err
    assert "--sign-key KEY" in err
    assert git(tmp_path / "r.git", "log", "-1", "--format=%G?", "main") == "N"


def test_signed_init_does_not_warn(
    tmp_path: Path, alice: SigningKey, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(str(tmp_path / "r.git"), "--bare", "--sign-key", str(alice.private)) == 0
    out, err = capsys.readouterr()
    assert "signed first commit" in out and "unsigned" not in out and err == ""


@pytest.mark.docker
def test_a_registry_on_another_branch_works_end_to_end(
    tmp_path: Path, docker_client: object, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "registry.git"
    assert init(str(bare), "--bare", "--branch", BRANCH) == 0
    assert git(bare, "symbolic-ref", "HEAD") == f"refs/heads/{BRANCH}"
    work = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True)
    assert git(work, "branch", "--show-current") == BRANCH
    write_task(work, TaskDraft("t1", TEST_IMAGE, ("hospital-a",), command=("true",)))
    submit_task(work, "t1", branch=BRANCH, sign_key=None)
    config = write_site_config(tmp_path, "hospital-a", bare)
    document = yaml.safe_load(config.read_text())
    document["registry"]["branch"] = BRANCH
    config.write_text(yaml.safe_dump(document))
    assert main(["agent", "once", "--config", str(config)]) == 0
    record = remote_status(bare, "t1")
    assert record is not None and record["state"] == "completed"
    capsys.readouterr()
    assert main(["status", "--registry", str(work)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["t1", "hospital-a", "completed"] in rows
    commands = ci_commands(work)
    assert commands == ["ptm validate .", "ptm validate ."]
    for command in commands:
        done = shell(command, work)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "registry is valid" in done.stdout


def test_the_readmes_maintainer_session_works_as_written(
    tmp_path: Path, isolated_home: Path
) -> None:
    init_step, validate_step = sessions(section("## For registry maintainers"))
    key = isolated_home / ".ssh" / "id_ed25519"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    here = str(tmp_path)
    command = init_step.command.replace("/srv/git", here)
    _, done = run_step(Step(command, ()), tmp_path, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [line.replace("/srv/git", here) for line in init_step.shown]
    assert done.stderr == ""  # signed: nothing to warn about
    work = tmp_path / "my-registry"
    subprocess.run(["git", "clone", "-q", str(tmp_path / "consortium.git"), str(work)], check=True)
    (work / "sites").mkdir(exist_ok=True)
    for site in ("hospital-a", "hospital-b"):
        (work / "sites" / f"{site}.yaml").write_text(f"ptm: 1\nname: {site}\n")
    write_task(work, TaskDraft("typo", TEST_IMAGE, ("hosptial-b",)))
    _, done = run_step(validate_step, work, tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines() == list(validate_step.shown)


def every_positional(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from every_positional(subparser, f"{name} {sub}")
        elif not action.option_strings:
            yield f"{name} {action.dest}", action.help or ""


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_positional_argument_says_what_it_is(command: str) -> None:
    parser = build_parser(command)
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [where for where, text in every_positional(commands.choices[command], "") if not text]
    assert missing == []


def test_the_template_itself_validates(capsys: pytest.CaptureFixture[str]) -> None:
    """bench/startup.py and anyone reading registry-template/ see a valid registry."""
    assert main(["validate", str(template_dir())]) == 0
    assert "registry is valid" in capsys.readouterr().out
