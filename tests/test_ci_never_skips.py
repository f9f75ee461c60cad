"""In CI a missing Docker engine fails the tests that need it; on a laptop they skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDS_DOCKER = "tests/test_engine.py::test_container_runs_and_its_output_is_read"


def run_without_engine(tmp_path: Path, *, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    env.pop("CI", None)
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", NEEDS_DOCKER],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ci_fails_a_docker_test_when_no_engine_is_reachable(tmp_path: Path) -> None:
    done = run_without_engine(tmp_path, ci=True)
    assert done.returncode == 1, done.stdout
    assert "CI must not skip a test: no Docker engine reachable" in done.stdout
    assert "skipped" not in done.stdout.splitlines()[-1]


def test_a_laptop_without_docker_skips_it(tmp_path: Path) -> None:
    done = run_without_engine(tmp_path, ci=False)
    assert done.returncode == 0, done.stdout
    assert "1 skipped" in done.stdout.splitlines()[-1]
