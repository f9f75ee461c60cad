"""``ptm demo`` end to end, as a newcomer runs it, and its one-line refusal without Docker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_git import git
from tests.readme_session import assert_shown_in, blocks, run_step, section, sessions

SITES = ("hospital-a", "hospital-b", "hospital-c")


def run_demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ptm", "demo", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env or os.environ.copy(),
    )


@pytest.mark.docker
def test_demo_then_the_readmes_walk_throughs_verbatim(
    tmp_path: Path, docker_client: object
) -> None:
    """The demo, then the README's researcher and auditor sessions run in its folder, in order."""
    folder = tmp_path / "demo"
    done = run_demo("--folder", str(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    check_demo_output(done.stdout, folder)
    check_demo_registry(folder)
    clone = walk(section("### Write, check and submit a task"), folder, folder, broken_task=True)
    assert clone == folder / "researcher"
    walk(section("### Follow it, collect the results, go again"), clone, folder)
    walk(section("## For auditors"), clone, folder)
    plain_git(section("## For auditors"), clone)
    assert git(clone, "status", "--porcelain") == ""  # config.yaml and results/ stay out of git


def check_demo_output(out: str, folder: Path) -> None:
    for site in SITES:
        assert f"mean-age  {site}" in out and "completed" in out
    combined = next(line for line in out.splitlines() if line.startswith("combined"))
    assert combined.split()[1] == "711"
    assert "(difference 0.00e+00)" in out
    (shown,) = [b for b in blocks(section("## See it work")) if b[0] == "$ scripts/demo"]
    until = next(i for i, line in enumerate(shown) if line.startswith("The agents stopped"))
    assert_shown_in(tuple(line for line in shown[2:until]), out, folder)
    assert f"cd {folder}/researcher" in out and "ptm agent once --config ../sites/" in out


def check_demo_registry(folder: Path) -> None:
    registry = folder / "registry.git"
    signers = folder / "allowed_signers"
    task_signature = git(
        registry,
        "-c",
        f"gpg.ssh.allowedSignersFile={signers}",
        "log",
        "-1",
        "--format=%G? %GS",
        "main",
        "--",
        "tasks/mean-age",
    )
    assert task_signature == "G researcher@demo.example"
    branches = git(registry, "branch", "--list", "results/*").split()
    assert branches == ["results/hospital-a", "results/hospital-b", "results/hospital-c"]
    assert "gpgsig" in git(registry, "cat-file", "-p", "results/hospital-a")
    listed = git(registry, "ls-tree", "--name-only", "main", "sites/").split()
    assert listed == ["sites/README.md", *(f"sites/{s}.yaml" for s in SITES)]
    clone = folder / "researcher"
    assert git(clone, "config", "gpg.format") == "ssh"
    assert git(clone, "config", "user.signingkey") == str(folder / "keys" / "researcher")
    assert (clone / "config.yaml").read_text() == "column: age\n"


def walk(text: str, cwd: Path, folder: Path, *, broken_task: bool = False) -> Path:
    """Run each ``$`` command of ``text`` in order; what the README shows must be printed."""
    for step in sessions(text):
        if broken_task and step.command == "ptm validate tasks/broken":
            broken = cwd / "tasks" / "broken"
            broken.mkdir(parents=True)
            (broken / "task.yaml").write_text(
                "ptm: 1\nimgae: x:1\nsites: [hospital-a]\nresources: {memory: 1GB}\n"
            )
        cwd, done = run_step(step, cwd, folder)
        expected_code = 1 if "broken" in step.command else 0
        assert done.returncode == expected_code, f"{step.command}\n{done.stdout}{done.stderr}"
        assert_shown_in(step.shown, done.stderr + done.stdout, folder)  # progress on stderr
        if broken_task and step.command == "ptm validate tasks/broken":
            shutil.rmtree(cwd / "tasks" / "broken")
    return cwd


def plain_git(text: str, clone: Path) -> None:
    """The plain-git recipes work as written: every signature they show is good."""
    (recipe,) = blocks(text, language="sh")
    printed = []
    for line in recipe:
        done = subprocess.run(
            ["bash", "-c", line], cwd=clone, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{line}\n{done.stdout}{done.stderr}"
        printed.append(done.stdout)
    assert 'Good "git" signature for researcher@demo.example' in printed[1]
    assert 'Good "git" signature for ptm-agent@hospital-a' in printed[3]
    assert "No signature" not in printed[1] + printed[3]
    assert "state: completed" in printed[4]


def test_demo_without_docker_says_so_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    done = run_demo("--folder", str(tmp_path / "demo"), env=env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "needs a Docker engine" in lines[0] and "scripts/engine start" in lines[0]


def test_the_demo_says_how_to_reach_this_ptm_when_path_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ptm.commands.demo_cmd import _path_hint

    monkeypatch.setenv("PATH", str(tmp_path))  # no ptm here
    hint = _path_hint()
    assert hint is not None and str(Path(sys.executable).parent) in hint
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{tmp_path}")
    if (Path(sys.executable).parent / "ptm").exists():
        assert _path_hint() is None


def test_scripts_demo_installs_only_what_the_demo_needs() -> None:
    script = (Path(__file__).parents[1] / "scripts" / "demo").read_text()
    (packages,) = [line for line in script.splitlines() if line.strip().startswith("for package")]
    assert packages.split(" in ")[1].split(";")[0].split() == ["docker.io", "busybox-static"]
    assert "docker-registry" not in packages and "engine packages" not in script
    assert (
        subprocess.run(["bash", "-n", "scripts/demo"], cwd=Path(__file__).parents[1]).returncode
        == 0
    )
    assert "scripts/engine start" in script  # how to start the engine it stopped
