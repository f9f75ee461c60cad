"""The watch loop on a real bare registry: asleep when idle, awake on a push, backing off when
cycles fail. Cycles are counted from the loop's own log records, never from timing or CPU."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from ptm.agent import Agent
from ptm.decisions import drop_decision, make_decision
from ptm.runtimes.docker import DockerRuntime
from ptm.siteconfig import load_site_config
from ptm.watch import run_until_stopped, written_path
from tests.agent_support import Researcher, remote_status, write_site_config
from tests.fixtures_git import git


class Records(logging.Handler):
    """Every log record of one agent, kept in order."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def decisions(self, decision: str) -> list[logging.LogRecord]:
        return [r for r in list(self.records) if getattr(r, "decision", None) == decision]


def agent_for(
    tmp_path: Path,
    registry_path: Path,
    *,
    registry: dict[str, str] | None = None,
    **overrides: object,
) -> Agent:
    """An agent for hospital-a; ``registry`` replaces keys of the config's registry section."""
    path = write_site_config(tmp_path, "hospital-a", registry_path, **overrides)
    document = yaml.safe_load(path.read_text())
    document["registry"].update(registry or {})
    path.write_text(yaml.safe_dump(document))
    return Agent(load_site_config(path), DockerRuntime(None))


@contextmanager
def watching(agent: Agent) -> Iterator[Records]:
    records = Records()
    agent.log.addHandler(records)
    agent.log.setLevel(logging.DEBUG)
    stop = threading.Event()
    thread = threading.Thread(target=run_until_stopped, args=(agent, stop), daemon=True)
    thread.start()
    try:
        yield records
    finally:
        stop.set()
        thread.join(timeout=30)
        agent.log.removeHandler(records)
        assert not thread.is_alive(), "the watch loop did not stop"


def wait_for(condition: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.mark.docker
def test_idle_agent_sleeps_and_a_push_wakes_it(
    bare_registry: Path, tmp_path: Path, docker_client: object
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("t-other", sites=("hospital-b",))  # for another site: one idle cycle
    agent = agent_for(tmp_path, bare_registry, poll_interval=30)
    with watching(agent) as records:
        wait_for(lambda: agent.workdir.load_state().processed, timeout=30)
        # Each cycle's own ls-remote opens and closes files in the registry folder; before,
        # every such event woke the next cycle (over a hundred a second).
        time.sleep(3)
        idle_cycles = len(records.decisions("cycle"))
        assert idle_cycles <= 2

        researcher.submit("t-new", "echo woken")
        wait_for(lambda: remote_status(bare_registry, "t-new") is not None, timeout=20)
        reasons = [r.getMessage() for r in records.decisions("cycle")[idle_cycles:]]
        assert reasons[0] == "cycle (woken)"  # the push woke it, long before the 30 s poll
        wait_for(lambda: _state(bare_registry, "t-new") == "completed", timeout=60)


PUSH_LOG_HOOK = """#!/bin/sh
while read old new ref; do
    case "$ref" in refs/heads/results/*) date +%s.%N >> "$0.log" ;; esac
done
"""


@pytest.mark.docker
def test_a_runs_end_pushes_its_result_without_a_poll_spaced_while_others_run(
    bare_registry: Path, tmp_path: Path, docker_client: object
) -> None:
    hook = bare_registry / "hooks" / "post-receive"
    hook.write_text(PUSH_LOG_HOOK)
    hook.chmod(0o755)
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    tasks = [f"t-{n}" for n in range(6)]
    for task in tasks:
        researcher.submit(task, "sleep 0.3")
    agent = agent_for(tmp_path, bare_registry, poll_interval=30, limits={"max_parallel": 2})
    with watching(agent) as records:
        wait_for(lambda: all(_state(bare_registry, t) == "completed" for t in tasks), 120)
        cycles = len(records.decisions("cycle"))
        pushes = [float(line) for line in Path(f"{hook}.log").read_text().split()]
    assert cycles == 1  # six runs ended: none of them polled the registry
    # While tasks run a push waits a second after the one before (tasks here end a few tens
    # of milliseconds apart); the last one, with nothing running any more, goes at once. (The
    # hook sees a push's end: half a second leaves room for pushes of different sizes.)
    gaps = [later - earlier for earlier, later in itertools.pairwise(pushes)]
    assert len(pushes) >= 3 and all(gap > 0.5 for gap in gaps[:-1]), gaps


def _state(registry: Path, task_id: str) -> object:
    status = remote_status(registry, task_id)
    return None if status is None else status["state"]


@pytest.mark.docker
def test_results_pushed_by_other_sites_do_not_wake_an_agent(
    bare_registry: Path, tmp_path: Path, docker_client: object
) -> None:
    agent = agent_for(tmp_path, bare_registry, poll_interval=30)
    other = Researcher(bare_registry, tmp_path / "other-site")
    with watching(agent) as records:
        wait_for(lambda: agent.workdir.load_state().processed, timeout=30)
        before = len(records.decisions("cycle"))
        for n in range(5):
            git(other.work, "commit", "-q", "--allow-empty", "-m", f"result {n}")
            git(other.work, "push", "-q", "origin", "HEAD:refs/heads/results/hospital-b")
        time.sleep(1.5)
        assert len(records.decisions("cycle")) == before


@pytest.mark.docker
def test_an_admins_decision_wakes_the_agent(
    bare_registry: Path, tmp_path: Path, docker_client: object
) -> None:
    agent = agent_for(tmp_path, bare_registry, poll_interval=30)
    with watching(agent) as records:
        wait_for(lambda: agent.workdir.load_state().processed, timeout=30)
        before = len(records.decisions("cycle"))
        drop_decision(agent.workdir, make_decision("t-x", "approve", reason=None, decided_by="a"))
        wait_for(lambda: len(records.decisions("cycle")) > before, timeout=10)
        assert records.decisions("cycle")[before].getMessage() == "cycle (woken)"
        ignored = "decision approve for task t-x ignored: the task is unknown here"
        wait_for(lambda: ignored in [r.getMessage() for r in list(records.records)], timeout=10)


def test_failing_cycles_back_off_even_while_the_registry_folder_is_busy(
    bare_registry: Path, tmp_path: Path
) -> None:
    # The branch does not exist: every cycle fails, and each try reads the registry folder.
    agent = agent_for(tmp_path, bare_registry, poll_interval=1, registry={"branch": "missing"})
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    with watching(agent) as records:
        wait_for(lambda: records.decisions("cycle-failed"), timeout=20)
        researcher.submit("t-busy", sites=("hospital-b",))  # a push to another branch
        time.sleep(3.5)
        failures = records.decisions("cycle-failed")
    # Backoff of 1, 2, 4 s: three or four tries in about five seconds, not hundreds.
    assert 2 <= len(failures) <= 4
    delays = [float(r.getMessage().split("retrying in ")[1].split("s")[0]) for r in failures]
    assert delays == [1.0, 2.0, 4.0, 8.0][: len(delays)]
    assert "--branch missing" in failures[0].getMessage()


def test_only_a_written_file_counts_as_a_change() -> None:
    ref = "/r/refs/heads/main"
    assert written_path(FileMovedEvent(ref + ".lock", ref)) == ref
    assert written_path(FileCreatedEvent(ref)) == ref
    assert written_path(FileModifiedEvent(ref)) == ref
    assert written_path(FileOpenedEvent(ref)) is None
    assert written_path(FileClosedEvent(ref)) is None
