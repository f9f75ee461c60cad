"""Quick commands start quickly: no GitPython, docker, paramiko, watchdog or pyrage behind them
(the researchers' and auditors' commands import none of the extras' libraries either; see
tests/test_light_install.py for them running without); and without git on PATH every command
says so in one line."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptm.commands import COMMANDS, command_module

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("git", "docker", "paramiko", "watchdog", "pyrage")


@pytest.fixture(scope="module")
def a_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry as 'ptm registry init' makes it, for 'ptm validate' to read."""
    path = tmp_path_factory.mktemp("startup") / "registry"
    done = subprocess.run(
        [sys.executable, "-m", "ptm", "registry", "init", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return path


def imported_modules(*args: str, env: dict[str, str] | None = None) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ptm", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize(
    "args",
    [
        ("--version",),
        ("--help",),
        ("validate",),
        *((name, "--help") for name in ("task", "status", "results", "cancel", "audit", "policy")),
    ],
    ids=" ".join,
)
def test_quick_commands_import_no_heavy_library(args: tuple[str, ...], a_registry: Path) -> None:
    modules = imported_modules(*args, *([str(a_registry)] if args == ("validate",) else []))
    assert "ptm.main" in modules  # the measurement works
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == []


def test_a_command_that_needs_a_library_still_imports_it() -> None:
    modules = imported_modules("agent", "--help")
    assert "ptm.commands.agent_admin_cmd" in modules and "watchdog" in modules


def test_each_command_table_help_is_the_one_its_module_registers() -> None:
    for name, (_, text) in COMMANDS.items():
        parser = argparse.ArgumentParser()
        commands = parser.add_subparsers()
        command_module(name).register(commands)
        assert list(commands.choices) == [name]
        helps = {action.dest: action.help for action in commands._choices_actions}
        assert helps == {name: text}, "copy the new help into ptm/commands/__init__.py"


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("validate", "registry-template"),
        ("agent", "check", "--config", "site.yaml"),
        ("task", "submit", "t1"),
        ("demo",),
    ],
    ids=" ".join,
)
def test_without_git_every_command_says_so_in_one_line(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {**os.environ, "PATH": str(empty_bin)}
    done = subprocess.run(
        [sys.executable, "-m", "ptm", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "ptm: error: git was not found on PATH; install git (2.34 or newer) and try again"
    ]
    assert done.stdout == ""


def test_version_needs_no_git(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "ptm", "--version"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0
    assert done.stdout.startswith("ptm ")
