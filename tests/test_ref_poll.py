"""The poll's ls-refs session (ptm/ref_poll.py) against a real sshd on loopback: right heads
across pushes without a remote session per poll, a v0 host, a killed session or master, and
hostile hosts that answer malformed, oversize, endless or not at all."""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ptm.agent import Agent
from ptm.ref_poll import (
    BranchHead,
    BranchPoll,
    ProtocolViolation,
    head_in,
    protocol_of,
    repository_path,
    split_packet,
    upload_pack_command,
)
from ptm.registry import init_registry, ssh_environment
from ptm.runtimes.docker import DockerRuntime
from ptm.siteconfig import load_site_config
from ptm.ssh_share import SharedConnection
from ptm.sync import Polled, TasksMirror
from tests.agent_support import Researcher, write_site_config
from tests.ssh_servers import (
    SshServer,
    forced_command,
    make_ssh_key,
    running_gitolite,
    running_sshd,
    ssh_command,
)

OID = "0123456789abcdef0123456789abcdef01234567"

# ---- pure parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"0000", (b"", 4)),
        (b"000ahello\n", (b"hello", 10)),
        (b"0009hello", (b"hello", 9)),
        (b"000ahel", None),
        (b"00", None),
    ],
)
def test_a_pkt_line_is_split_off_whole_or_not_at_all(
    data: bytes, expected: tuple[bytes, int] | None
) -> None:
    assert split_packet(data) == expected


@pytest.mark.parametrize(
    "data", [b"zzzz", b"+01f", b" 01f", b"0x1f", b"001F", b"0001", b"0002", b"0004", b"fff1"]
)
def test_a_malformed_or_oversize_length_is_refused(data: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        split_packet(data + b"x" * 40)


def test_ls_refs_lines_are_checked_and_only_the_exact_ref_counts() -> None:
    other = "f" * 40
    lines = [f"{other} refs/heads/main-old".encode(), f"{OID} refs/heads/main".encode()]
    assert head_in(lines, "refs/heads/main") == OID
    assert head_in(lines[:1], "refs/heads/main") is None
    assert head_in([f"{OID} refs/heads/main symref-target:x".encode()], "refs/heads/main") == OID
    for bad in (
        f"{OID.upper()} refs/heads/main",
        f"{OID[:39]} refs/heads/main",
        f"{OID}refs/heads/main",
        f"{OID} ",
        "ref: refs/heads/main",
    ):
        with pytest.raises(ProtocolViolation):
            head_in([bad.encode()], "refs/heads/main")
    with pytest.raises(ProtocolViolation, match="two heads"):
        head_in(
            [f"{OID} refs/heads/main".encode(), lines[0][:40] + b" refs/heads/main"],
            "refs/heads/main",
        )


def test_the_first_line_tells_the_protocol() -> None:
    assert protocol_of(b"version 2") == 2
    assert protocol_of(f"{OID} HEAD\0multi_ack".encode()) == 0
    assert protocol_of(b"version 1") == 0
    for bad in (b"HTTP/1.1 200 OK", b"version 3", b""):
        with pytest.raises(ProtocolViolation):
            protocol_of(bad)


@pytest.mark.parametrize(
    "url",
    [
        "ssh://git@127.0.0.1:2222/srv/a b/registry.git",
        "ssh://host/~/registry.git",
        "ssh://host/%7Ealice/registry",
        "ssh://host/odd/it's!here",
        "host:consortium/registry.git",
        "git@host:/abs/registry",
        "host:~alice/registry",
    ],
)
def test_the_remote_command_is_the_one_git_sends(url: str, tmp_path: Path) -> None:
    record = tmp_path / "args"
    fake = tmp_path / "bin" / "ssh"  # named ssh: git treats it as OpenSSH
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nfor a; do printf "%s\\0" "$a"; done > {record}\nexit 1\n')
    fake.chmod(0o755)
    env = {**os.environ, "GIT_SSH_COMMAND": str(fake)}
    subprocess.run(["git", "ls-remote", url], env=env, capture_output=True, check=False)
    sent = record.read_bytes().split(b"\0")[-2].decode()
    path = repository_path(url)
    assert path is not None and upload_pack_command(path) == sent


# ---- against a real sshd -------------------------------------------------------------------

HOSTILE = r"""#!/bin/sh
# Misbehaves in the one session that takes the armed trap; serves git as sshd would otherwise.
trap_file={folder}/trap
if mv "$trap_file" "$trap_file.taken" 2>/dev/null; then
    v2='000eversion 2\n0013ls-refs=unborn\n0000'
    case "$(cat "$trap_file.taken")" in
        silent-greeting) exec cat >/dev/null ;;
        garbage-greeting) printf 'HTTP/1.1 200 OK\r\n\r\n'; exec cat >/dev/null ;;
        bad-hex) printf "$v2"; printf 'zz3d'; exec cat >/dev/null ;;
        oversize) printf "$v2"; printf 'fff1xxxxxxxxxxxx'; exec cat >/dev/null ;;
        endless) printf "$v2"; exec yes "003a{oid} refs/heads/x" ;;
        silence) printf "$v2"; exec cat >/dev/null ;;
        trickle) printf "$v2"; while printf 1; do sleep 0.1; done ;;
        bad-oid) printf "$v2"; printf '003d%s refs/heads/main\n0000' {upper}; exec cat >/dev/null ;;
        dies) printf "$v2"; kill -9 $$ ;;
        refused) echo 'fatal: no such repository' >&2; exit 128 ;;
    esac
    exit 0
fi
exec sh -c "$SSH_ORIGINAL_COMMAND"
"""
MODES = [
    "silent-greeting",
    "garbage-greeting",
    "bad-hex",
    "oversize",
    "endless",
    "silence",
    "trickle",
    "bad-oid",
    "dies",
    "refused",
]


@dataclass(frozen=True)
class Remote:
    server: SshServer
    registry: Path
    mirror: TasksMirror
    share: SharedConnection
    env: dict[str, str]

    def poll(self, *, within: float = 10.0, retry_after: float = 5.0) -> BranchPoll:
        command = self.mirror.session_command
        return BranchPoll(self.mirror.url, "main", command, within=within, retry_after=retry_after)

    def arm(self, mode: str) -> None:
        (self.server.folder / "trap").write_text(mode)

    def log_count(self, text: str) -> int:
        return (self.server.folder / "sshd.log").read_text().count(text)


def hostile_key_line(folder: Path, key_line: str) -> str:
    script = folder / "hostile.sh"
    script.write_text(HOSTILE.format(folder=folder / "d", oid=OID, upper=OID.upper()))
    script.chmod(0o755)
    return forced_command(key_line, str(script))


@contextmanager
def polled_registry(
    tmp_path: Path, *, git_protocol: bool = True, hostile: bool = False
) -> Iterator[Remote]:
    """A bare registry behind a real sshd and a site's mirror of it sharing one master."""
    registry = tmp_path / "registry.git"
    init_registry(registry, bare=True)
    key = make_ssh_key(tmp_path / "keys", "site")
    line = hostile_key_line(tmp_path, key.public_line) if hostile else key.public_line
    with running_sshd(tmp_path / "d", [line], git_protocol=git_protocol) as server:
        url = server.url(str(registry).lstrip("/"))
        known_hosts = server.known_hosts(tmp_path / "known_hosts")
        env = ssh_environment(key.private, known_hosts)
        mirror = TasksMirror(
            tmp_path / "m" / "tasks",
            url=url,
            branch="main",
            ssh_key=key.private,
            known_hosts=known_hosts,
        )
        share = SharedConnection(url, tmp_path / "m" / "ssh")
        mirror.share = share
        share.ensure(env)
        wait_for(share.alive, "the shared connection")
        mirror.ensure_clone()
        try:
            yield Remote(server, registry, mirror, share, env)
        finally:
            share.close(env)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def branch_head(registry: Path) -> str:
    done = subprocess.run(
        ["git", "rev-parse", "refs/heads/main"], cwd=registry, capture_output=True, text=True
    )
    return done.stdout.strip()


def children_started() -> int:
    """Page faults of every child this process has waited for: any process started and
    reaped (an ssh client, a git) adds hundreds."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt


def upload_packs(registry: Path) -> list[int]:
    """Pids of the git-upload-pack processes serving ``registry`` (the remote side)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"upload-pack" in command and str(registry).encode() in command:
            found.append(int(entry.name))
    return found


def master_pid(polled: Remote) -> int:
    destination = ["-p", str(polled.server.port), f"{polled.server.user}@127.0.0.1"]
    done = subprocess.run(
        ["ssh", "-o", f"ControlPath={polled.share.socket}", "-O", "check", *destination],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(done.stderr.split("pid=")[1].split(")")[0])


def test_ls_refs_reports_the_head_across_pushes_starting_no_process_and_no_login(
    tmp_path: Path,
) -> None:
    with polled_registry(tmp_path) as polled:
        poll = polled.poll()
        researcher = Researcher(polled.registry, tmp_path / "researcher")
        logins, sessions = polled.log_count("Accepted publickey"), polled.log_count("Starting")
        for n in range(3):
            commit = researcher.submit(f"t{n}", "true")
            assert commit == branch_head(polled.registry)
            before = children_started()
            answers = [poll.head() for _ in range(3)]
            assert children_started() == before  # no ssh client, no git
            assert answers == [BranchHead(commit)] * 3
        assert polled.log_count("Accepted publickey") == logins  # over the one connection
        assert polled.log_count("Starting") == sessions + 9  # one session on it per poll
        wait_for(lambda: not upload_packs(polled.registry), "the end of every git-upload-pack")


def test_through_the_mirror_an_idle_poll_fetches_nothing_and_a_moved_head_is_fetched(
    tmp_path: Path,
) -> None:
    with polled_registry(tmp_path) as polled:
        mirror = polled.mirror
        head = branch_head(polled.registry)
        idle = mirror.poll(head)
        assert (idle.head, idle.fetched) == (head, False)
        commit = Researcher(polled.registry, tmp_path / "researcher").submit("t1", "true")
        moved = mirror.poll(head)
        assert (moved.head, moved.fetched) == (commit, True)
        assert mirror.repo.rev_parse(commit) == commit  # fetched into the mirror
        first = mirror.poll(None)  # a site that processed nothing yet fetches
        assert (first.head, first.fetched) == (commit, True)


def test_a_host_without_accept_env_git_protocol_keeps_fetching(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logs = caplog.at_level(logging.INFO, logger="ptm.ref_poll")
    with logs, polled_registry(tmp_path, git_protocol=False) as polled:
        mirror, head = polled.mirror, branch_head(polled.registry)
        for _ in range(3):
            polled_head = mirror.poll(head)
            assert (polled_head.head, polled_head.fetched) == (head, True)
        assert mirror.branch_poll.unavailable is not None
        assert "protocol v0" in mirror.branch_poll.unavailable
        commit = Researcher(polled.registry, tmp_path / "researcher").submit("t1", "true")
        assert mirror.poll(head).head == commit
    said = [r.getMessage() for r in caplog.records if r.name == "ptm.ref_poll"]
    assert len(said) == 1 and "AcceptEnv GIT_PROTOCOL" in said[0]  # said once


def test_a_killed_master_falls_back_to_the_fetch_and_ls_refs_comes_back(tmp_path: Path) -> None:
    with polled_registry(tmp_path) as polled:
        head = branch_head(polled.registry)
        poll = polled.poll(retry_after=0.2)
        assert poll.head() == BranchHead(head)
        os.kill(master_pid(polled), signal.SIGKILL)
        began = time.monotonic()
        assert poll.head() is None  # nothing answers on the socket: no wait, no warning
        assert time.monotonic() - began < 1
        assert polled.mirror.poll(head) == Polled(head, fetched=True)  # connects on its own
        polled.mirror.share = fresh = SharedConnection(polled.share.url, polled.share.folder)
        fresh.ensure(polled.env)
        wait_for(fresh.alive, "a new shared connection")
        assert poll.head() == BranchHead(head)
        fresh.close(polled.env)


def test_a_hostile_host_gives_a_bounded_fallback_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with polled_registry(tmp_path, hostile=True) as polled:
        head = branch_head(polled.registry)
        for mode in MODES:
            poll = polled.poll(within=1.5, retry_after=0.1)
            polled.arm(mode)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="ptm.ref_poll"):
                began = time.monotonic()
                assert poll.head() is None, mode
                took = time.monotonic() - began
            assert took < 3, (mode, took)
            warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warned) == 1, (mode, caplog.records)
            assert "this poll fetches instead" in warned[0].getMessage()
            if mode == "refused":
                assert "the host said: fatal: no such repository" in warned[0].getMessage()
            assert poll.head() is None  # within the pause: no new try
            assert polled.mirror.fetch() == head, mode  # git's own fetch is served
            time.sleep(0.15)
            assert poll.head() == BranchHead(head), mode  # the trap is spent: answered again
        wait_for(lambda: not upload_packs(polled.registry), "the end of every remote session")


# ---- the agent -----------------------------------------------------------------------------


@contextmanager
def ssh_site(tmp_path: Path, *, hostile: bool = False) -> Iterator[tuple[Agent, Remote]]:
    """An agent for a registry behind a real sshd, its shared connection up."""
    with polled_registry(tmp_path, hostile=hostile) as remote:
        path = write_site_config(tmp_path, "hospital-a", Path("/unused"))
        document = yaml.safe_load(path.read_text())
        keys = tmp_path / "keys" / "site"
        registry = {"url": remote.mirror.url, "ssh_key": str(keys), "branch": "main"}
        document["registry"] = {**registry, "known_hosts": str(tmp_path / "known_hosts")}
        document["workdir"] = str(tmp_path / "w")
        path.write_text(yaml.safe_dump(document))
        agent = Agent(load_site_config(path), DockerRuntime(None))
        agent.start()
        agent.once()
        wait_for(agent.ssh.alive, "the agent's shared connection")
        yield agent, remote


def processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.docker
def test_an_idle_agent_cycle_starts_no_process_a_push_is_run_and_stop_leaves_none(
    tmp_path: Path, test_image: str
) -> None:
    with ssh_site(tmp_path) as (agent, remote):
        agent.cycle()  # reaps the master's starter (ssh -f's parent, started by agent.once)
        before = children_started()
        for _ in range(3):
            assert agent.cycle().idle
        assert children_started() == before  # no git, no ssh: ls-refs on the master only
        Researcher(remote.registry, tmp_path / "researcher").submit("picked", "true")
        report = agent.cycle()
        assert report.new_tasks == 1 and report.started == 1
        agent.drain()
        agent.publish()
        record = agent.ledger.status_of("picked")
        assert record is not None and record.state == "completed"
        socket_path = str(agent.ssh.socket)
        assert processes_naming(socket_path)  # the master
        agent.hand_back()
        wait_for(lambda: not processes_naming(socket_path), "the master's end")
        wait_for(lambda: not upload_packs(remote.registry), "the end of every git-upload-pack")


@pytest.mark.docker
def test_a_hostile_answer_costs_one_warning_and_the_agent_still_runs_the_task(
    tmp_path: Path, test_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    with ssh_site(tmp_path, hostile=True) as (agent, remote):
        remote.arm("bad-hex")
        Researcher(remote.registry, tmp_path / "researcher").submit("despite", "true")
        with caplog.at_level(logging.INFO, logger="ptm.ref_poll"):
            agent.once()
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warned) == 1 and "pkt-line length" in warned[0]
        record = agent.ledger.status_of("despite")
        assert record is not None and record.state == "completed"
        agent.hand_back()


GITOLITE_CONF = """repo registry
    RW+     = admin
    R       = hospital-a
"""


def test_ls_refs_through_gitolite_answers_like_git(tmp_path: Path) -> None:
    with running_gitolite(tmp_path, ["admin", "hospital-a"], GITOLITE_CONF) as host:
        seed = tmp_path / "seed.git"
        init_registry(seed, bare=True)
        pinned = host.ssh.known_hosts(tmp_path / "known_hosts")
        admin = {**os.environ, "GIT_SSH_COMMAND": ssh_command(host.keys["admin"].private, pinned)}
        push = ["git", "push", "-q", host.url("registry"), "main:main"]
        subprocess.run(push, cwd=seed, check=True, env=admin)
        key = host.keys["hospital-a"].private
        mirror = TasksMirror(
            tmp_path / "m" / "tasks",
            url=host.url("registry"),
            branch="main",
            ssh_key=key,
            known_hosts=pinned,
        )
        mirror.share = share = SharedConnection(mirror.url, tmp_path / "m" / "ssh")
        env = ssh_environment(key, pinned)
        share.ensure(env)
        wait_for(share.alive, "the shared connection")
        try:
            poll = BranchPoll(mirror.url, "main", mirror.session_command)
            assert poll.head() == BranchHead(branch_head(host.bare("registry")))
            assert poll.unavailable is None  # gitolite passed GIT_PROTOCOL on to git
        finally:
            share.close(env)
