"""process.run_bounded with real processes: input and output intact, deadlines that stop a
whole process group, and wind_down (what SIGTERM does to the agent) stopping calls in flight."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptm.errors import CommandTimedOut
from ptm.process import run_bounded


def test_input_reaches_a_command_that_starts_reading_late() -> None:
    # Bigger than a pipe's buffer, and the reader starts after several wait slices: the whole
    # input must still arrive (Popen.communicate retried in slices stops writing it).
    data = os.urandom(300_000)
    done = run_bounded(
        ["sh", "-c", "sleep 0.5; cat"], cwd=None, env=os.environ, stdin=data, timeout=20
    )
    assert done.returncode == 0
    assert done.stdout == data


def test_stdout_stderr_and_exit_code_are_kept_apart() -> None:
    done = run_bounded(
        ["sh", "-c", "echo out; echo err >&2; exit 3"], cwd=None, env=os.environ, timeout=20
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")


def test_deadline_stops_the_command_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pid_file}; wait"
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as stopped:
        run_bounded(["sh", "-c", script], cwd=None, env=os.environ, timeout=1)
    assert time.monotonic() - started < 4
    assert not stopped.value.stopping
    assert "did not finish within 1 s" in str(stopped.value)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < deadline, "the command's child survived its deadline"
        time.sleep(0.05)


def test_wind_down_stops_calls_in_flight_and_refuses_new_ones() -> None:
    # In a process of its own: wind_down is for good (it is what SIGTERM does to an agent).
    probe = """
import os, threading, time
from ptm import process
from ptm.errors import CommandTimedOut
threading.Timer(0.5, process.wind_down, args=(0.5,)).start()
started = time.monotonic()
try:
    process.run_bounded(["sleep", "60"], cwd=None, env=os.environ, timeout=600)
except CommandTimedOut as exc:
    print("stopped", exc.stopping, round(time.monotonic() - started, 1))
try:
    process.run_bounded(["true"], cwd=None, env=os.environ, timeout=600)
except CommandTimedOut as exc:
    print("refused", exc.stopping)
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    first, second = done.stdout.splitlines()
    word, stopping, seconds = first.split()
    assert (word, stopping) == ("stopped", "True")
    assert float(seconds) < 3
    assert second == "refused True"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
