"""A site's bad day, with a real agent and a real engine: an agent that died between creating
and starting a container, a cancel while it was down, leftovers, an engine that is away for a
while, a full disk."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from ptm.agent import Agent
from ptm.runtimes.base import ContainerRef, ContainerSpec, ImageRef
from ptm.runtimes.docker import DockerRuntime
from ptm.siteconfig import load_site_config
from tests.agent_support import (
    Researcher,
    remote_status,
    states_in_history,
    write_site_config,
)
from tests.fixtures_docker import unavailable
from tests.fixtures_git import git

pytestmark = pytest.mark.docker


class DiesAfterCreate(DockerRuntime):
    """An engine seen by an agent that is killed right after creating a container."""

    def start(self, spec: ContainerSpec, image: ImageRef) -> ContainerRef:
        self.create(spec, image)
        raise SystemExit("killed between create and start")  # ends the run thread only


def agent_with(tmp_path: Path, registry: Path, engine: DockerRuntime, **overrides: object) -> Agent:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = load_site_config(write_site_config(tmp_path, "hospital-a", registry, **overrides))
    agent = Agent(config, engine)
    agent.start()
    return agent


def wait_for_state(agent: Agent, task_id: str, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = agent.ledger.status_of(task_id)
        if record is not None and record.state == state:
            return
        time.sleep(0.2)
    raise AssertionError(f"{task_id} never reached {state}")


def wait_for_remote_state(registry: Path, task_id: str, state: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = remote_status(registry, task_id)
        if status is not None and status["state"] == state:
            return
        time.sleep(0.2)
    raise AssertionError(f"{task_id} never reached {state} on the registry")


def ptm_containers(client: docker.DockerClient, task_id: str) -> list[object]:
    return client.containers.list(
        all=True, filters={"label": ["ptm.site=hospital-a", f"ptm.task={task_id}"]}
    )


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_container_created_but_not_started_is_started_at_restart(
    bare_registry: Path, tmp_path: Path, docker_client: docker.DockerClient, test_image: str
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("half", "echo done > /ptm/output/done.txt")
    first = agent_with(tmp_path, bare_registry, DiesAfterCreate(None))
    first.cycle()
    first.drain()
    assert [c.status for c in ptm_containers(docker_client, "half")] == ["created"]  # type: ignore[attr-defined]

    second = agent_with(tmp_path, bare_registry, DockerRuntime(None))
    second.once()

    status = remote_status(bare_registry, "half")
    assert status is not None and status["state"] == "completed", status
    assert "timed_out" not in states_in_history(bare_registry, "half")
    assert ptm_containers(docker_client, "half") == []


def test_a_task_cancelled_while_the_agent_was_down_is_killed_at_start(
    bare_registry: Path, tmp_path: Path, docker_client: docker.DockerClient, test_image: str
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("long", "sleep 300")
    config = write_site_config(tmp_path, "hospital-a", bare_registry)
    first = subprocess.Popen(
        [sys.executable, "-m", "ptm", "agent", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_remote_state(bare_registry, "long", "running")
    finally:
        first.kill()  # SIGKILL: the container goes on running
        first.wait()
    researcher.commit_file("tasks/long/cancel.yaml", "ptm: 1\nreason: stop\n", "cancel")

    second = agent_with(tmp_path, bare_registry, DockerRuntime(None))
    started = time.monotonic()
    second.once()

    assert time.monotonic() - started < 60
    status = remote_status(bare_registry, "long")
    assert status is not None and status["state"] == "cancelled", status
    assert "while running" in status["reason"]
    assert ptm_containers(docker_client, "long") == []


def test_the_exited_container_of_a_finished_task_is_removed_at_start(
    bare_registry: Path, tmp_path: Path, docker_client: docker.DockerClient, test_image: str
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("done", "true")
    agent_with(tmp_path, bare_registry, DockerRuntime(None)).once()
    leftover = docker_client.containers.create(
        test_image,
        ["true"],
        labels={"ptm.managed": "1", "ptm.site": "hospital-a", "ptm.task": "done"},
    )
    agent_with(tmp_path, bare_registry, DockerRuntime(None))
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(leftover.id)


class SocketForwarder:
    """A unix socket that forwards to the real engine's socket once ``open()`` is called:
    before that, the engine is simply not there."""

    def __init__(self, path: Path, target: str) -> None:
        self.path = path
        self.target = target
        self._server: socket.socket | None = None
        self._open: list[socket.socket] = []

    def open(self) -> None:
        self.path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        """The engine goes away: no new connection, and every open one is cut."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for connection in self._open:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self._open.clear()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def engine_socket(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[SocketForwarder]:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        unavailable("the engine outage test forwards a unix socket")
    forwarder = SocketForwarder(tmp_path / "engine.sock", host.removeprefix("unix://"))
    yield forwarder
    forwarder.close()


def test_an_engine_outage_delays_a_task_and_never_fails_it(
    bare_registry: Path, tmp_path: Path, engine_socket: SocketForwarder, test_image: str
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("patient", "echo ok > /ptm/output/ok.txt")
    runtime = DockerRuntime(f"unix://{engine_socket.path}")
    engine_socket.open()
    agent = agent_with(tmp_path, bare_registry, runtime, runtime={"pull": "if-missing"})
    engine_socket.close()
    agent.cycle()
    time.sleep(2.5)  # the engine is away: the task must wait, not fail
    record = agent.ledger.status_of("patient")
    # 'pulling' when the engine was already away at the image check, else 'accepted' (the
    # image was there; the start waits): open either way, never failed
    assert record is not None and record.state in {"accepted", "pulling"}, record
    engine_socket.open()
    agent.drain()
    agent.publish()
    status = remote_status(bare_registry, "patient")
    assert status is not None and status["state"] == "completed", status
    assert "failed" not in states_in_history(bare_registry, "patient")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        unavailable("mounting a small tmpfs as the work folder needs root")
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_fails_one_task_cleanly_and_the_agent_goes_on(
    bare_registry: Path, tmp_path: Path, small_disk: Path, test_image: str
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("big", "head -c 15000000 /dev/zero > /ptm/output/big.bin")
    agent = agent_with(
        tmp_path, bare_registry, DockerRuntime(None), workdir=str(small_disk / "work")
    )
    agent.once()
    status = remote_status(bare_registry, "big")
    assert status is not None and status["state"] == "failed", status
    assert "No space left on device" in status["reason"]
    researcher.submit("small", "echo fine > /ptm/output/fine.txt")
    agent.once()
    status = remote_status(bare_registry, "small")
    assert status is not None and status["state"] == "completed", status
    assert (
        git(bare_registry, "show", "results/hospital-a:results/small/hospital-a/output/fine.txt")
        == "fine"
    )


def test_a_second_agent_with_the_same_site_name_refuses_until_the_first_stops(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    from ptm.lease import LeaseHeld

    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("once-only", "echo ran >> /ptm/output/runs.txt")
    first = agent_with(tmp_path / "host-1", bare_registry, DockerRuntime(None))
    first.once()
    researcher.submit("second-task", "true")
    with pytest.raises(LeaseHeld, match=r"another agent .* runs this site"):
        agent_with(tmp_path / "host-2", bare_registry, DockerRuntime(None))
    first.hand_back()  # a clean stop releases the lease
    second = agent_with(tmp_path / "host-2", bare_registry, DockerRuntime(None))
    second.once()
    assert remote_status(bare_registry, "second-task")["state"] == "completed"  # type: ignore[index]
    assert states_in_history(bare_registry, "once-only").count("running") == 1


HAND_BACK_AFTER_THE_GRACE = """
import sys
from pathlib import Path
from ptm import process
from ptm.agent import Agent
from ptm.runtimes.docker import DockerRuntime
from ptm.siteconfig import load_site_config
agent = Agent(load_site_config(Path(sys.argv[1])), DockerRuntime(None))
agent.start()
agent.once()
process.wind_down(0)  # what a SIGTERM does once its grace is over: git calls are refused
print(agent.hand_back())
"""


def test_a_stop_whose_last_git_calls_are_refused_still_ends_cleanly(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    """A stop that came while git hung (its grace spent): the last push is given up, said so,
    and the stop goes on; it does not end the agent with an error."""
    Researcher(bare_registry, tmp_path / "researcher").submit("done-before", "true")
    config = write_site_config(tmp_path, "hospital-a", bare_registry)
    done = subprocess.run(
        [sys.executable, "-c", HAND_BACK_AFTER_THE_GRACE, str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"]  # no container left running
    assert "stopping without the last push" in done.stderr
    assert "shutting down" in done.stderr
    assert remote_status(bare_registry, "done-before")["state"] == "completed"  # type: ignore[index]
