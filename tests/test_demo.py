"""``ptm demo`` end to end, as a newcomer runs it, and its one-line refusal without Docker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_git import git

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
def test_demo_runs_a_whole_federation(tmp_path: Path, docker_client: object) -> None:
    folder = tmp_path / "demo"
    done = run_demo("--folder", str(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        assert f"mean-age  {site}" in out and "completed" in out
    combined = next(line for line in out.splitlines() if line.startswith("combined"))
    assert combined.split()[1] == "711"
    assert "(difference 0.00e+00)" in out
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
    auditor = tmp_path / "auditor_signers"
    site_keys = [(f"ptm-agent@{s}", folder / "keys" / f"{s}.pub") for s in SITES]
    lines = [signers.read_text()] + [
        f'{who} namespaces="git" {key.read_text().split()[0]} {key.read_text().split()[1]}\n'
        for who, key in site_keys
    ]
    auditor.write_text("".join(lines))
    audit = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptm",
            "audit",
            "--registry",
            str(folder / "researcher"),
            "--allowed-signers",
            str(auditor),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "0 finding(s)" in audit.stdout


def test_demo_without_docker_says_so_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    done = run_demo("--folder", str(tmp_path / "demo"), env=env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "needs a Docker engine" in lines[0] and "scripts/engine start" in lines[0]
