"""The poll's ls-refs (ptm/ref_poll.py): strict parsing, and against a real sshd on loopback
the right heads across pushes with no process started, a v0 host, a killed master, and
hostile hosts that answer malformed, oversize, endless, early-ending or not at all."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ptm.ref_poll import (
    BranchHead,
    ProtocolViolation,
    head_in,
    protocol_of,
    repository_path,
    split_packet,
    upload_pack_command,
)
from ptm.ssh_share import SharedConnection, ssh_destination
from ptm.sync import Polled
from tests.agent_support import Researcher
from tests.ref_poll_support import (
    MODES,
    OID,
    branch_head,
    children_started,
    master_pid,
    polled_registry,
    upload_packs,
    wait_for,
)

# ---- pure parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"0000", (None, 4)),
        (b"0005\n", (b"", 5)),  # an empty line, not a flush: it does not end an answer
        (b"000ahello\n", (b"hello", 10)),
        (b"0009hello", (b"hello", 9)),
        (b"000ahel", None),
        (b"00", None),
    ],
)
def test_a_pkt_line_is_split_off_whole_or_not_at_all(
    data: bytes, expected: tuple[bytes | None, int] | None
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
        "[git@127.0.0.1:2222]:registry.git",
        "git@[host:22]:registry.git",
        "[::1]:registry.git",
        "git@[::1]:/abs/registry",
        "[::1:2]:registry.git",
        "ssh://git@[::1]:2222/registry.git",
        "ssh://[::1]/registry.git",
        "[git@host]:registry.git",
    ],
)
def test_the_remote_command_and_host_are_the_ones_git_sends(url: str, tmp_path: Path) -> None:
    record = tmp_path / "args"
    fake = tmp_path / "bin" / "ssh"  # named ssh: git treats it as OpenSSH
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nfor a; do printf "%s\\0" "$a"; done > {record}\nexit 1\n')
    fake.chmod(0o755)
    env = {**os.environ, "GIT_SSH_COMMAND": str(fake)}
    subprocess.run(["git", "ls-remote", url], env=env, capture_output=True, check=False)
    args = record.read_bytes().decode().split("\0")[:-1]
    path = repository_path(url)
    assert path is not None and upload_pack_command(path) == args[-1]
    assert args[:2] == ["-o", "SendEnv=GIT_PROTOCOL"]
    assert ssh_destination(url) == args[2:-1]  # the host (and port) the shared master uses


@pytest.mark.parametrize(
    "url",
    [
        "/srv/registry.git",
        "./reg:x",
        "https://host/r.git",
        "file:///srv/r",
        "[host:x",
        "ssh://host",
    ],
)
def test_what_is_not_an_ssh_url_is_not_taken_for_one(url: str) -> None:
    assert repository_path(url) is None and ssh_destination(url) is None


# ---- against a real sshd -------------------------------------------------------------------


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
            warned = [
                r
                for r in caplog.records
                if r.name == "ptm.ref_poll" and r.levelno >= logging.WARNING
            ]
            assert len(warned) == 1, (mode, caplog.records)
            assert "this poll fetches instead" in warned[0].getMessage()
            if mode == "refused":
                assert "the host said: fatal: no such repository" in warned[0].getMessage()
            assert poll.head() is None  # within the pause: no new try
            assert polled.mirror.fetch() == head, mode  # git's own fetch is served
            time.sleep(0.15)
            assert poll.head() == BranchHead(head), mode  # the trap is spent: answered again
        wait_for(lambda: not upload_packs(polled.registry), "the end of every remote session")


def test_a_master_left_by_an_earlier_agent_is_replaced_once(tmp_path: Path) -> None:
    with polled_registry(tmp_path) as remote:
        left = master_pid(remote)
        successor = SharedConnection(remote.share.url, remote.share.folder)
        successor.ensure(remote.env)  # an older ptm's master may not pass GIT_PROTOCOL on
        wait_for(lambda: successor.alive() and master_pid(remote) != left, "a new master")
        own = master_pid(remote)
        successor.ensure(remote.env)
        assert successor.alive() and master_pid(remote) == own  # its own one is kept


def test_a_master_that_resets_the_connection_mid_exchange_is_refused_not_fatal(
    tmp_path: Path,
) -> None:
    """A master that dies after the connect (network gone, told to exit) resets the control
    socket: an error the poll falls back from, not an OSError that would end the agent. (A
    reset before the hello is sent gives EPIPE in sendall, which open_session maps the same
    way; that moment cannot be hit reliably from a test.)"""
    import socket
    import threading

    from ptm.ssh_mux import MuxRefused, open_session

    path = tmp_path / "c"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def reset_at_once() -> None:
        connection, _ = server.accept()
        time.sleep(0.3)  # the client's hello is in this end's queue, unread
        connection.close()  # unread data: the client's read fails with ECONNRESET

    thread = threading.Thread(target=reset_at_once)
    thread.start()
    try:
        with pytest.raises(MuxRefused):
            open_session(path, "git-upload-pack '/r'", [], deadline=time.monotonic() + 5)
    finally:
        thread.join(timeout=5)
        server.close()
