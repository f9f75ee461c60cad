"""A delivery waits out a short outage of the third party, and fails at once for anything else.

Against a real ``ptm sftp serve`` started on a reserved port a second after the delivery began,
and against the real service for the permanent failures.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ptm.delivery import deliver_files
from ptm.errors import DeliveryError
from ptm.sftp_server import SftpService
from ptm.siteconfig import SftpTarget
from tests.test_delivery import ACCOUNT, make_key, make_outputs, start_ttp, write_config
from tests.test_sftp_cmd import ptm_command, read_line

OUTAGE_SECONDS = 1.0
AT_ONCE_SECONDS = 5.0  # a permanent failure takes one attempt, far less than this


def reserved_port() -> int:
    """A loopback port nothing listens on (yet): connections to it are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LateService:
    """``ptm sftp serve`` on ``port``, started by ``start()``; its host key made beforehand."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        site_key, host_key = make_key(folder, "site"), make_key(folder, "host_key")
        accounts = {ACCOUNT: {"public_key": site_key.public_line}}
        self.config = write_config(folder, accounts, listen=f"127.0.0.1:{port}")
        self.target = SftpTarget(
            "ttp", "127.0.0.1", ACCOUNT, site_key.private, host_key.public_line, port=port
        )
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = ptm_command("sftp", "serve", "--config", str(self.config))

    def start_and_wait(self) -> None:
        self.start()
        assert self.process is not None
        read_line(self.process, f"ptm sftp: listening on 127.0.0.1:{self.target.port}")

    def stop(self) -> str:
        if self.process is None:
            return ""
        self.process.kill()
        return self.process.communicate(timeout=10)[1]

    def stored(self, relative: str) -> bytes:
        return (self.folder / "incoming" / ACCOUNT / relative).read_bytes()


@pytest.fixture
def late(tmp_path: Path) -> Iterator[LateService]:
    service = LateService(tmp_path, reserved_port())
    try:
        yield service
    finally:
        service.stop()


def resetting(port: int, until: float) -> threading.Thread:
    """Accept connections on ``port`` and reset each at once, until ``until`` (monotonic)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    listener.settimeout(0.05)

    def serve() -> None:
        with listener:
            while time.monotonic() < until:
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                connection.close()  # linger 0: the client sees a reset

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_target_that_comes_up_a_second_late_gets_the_delivery(
    late: LateService, tmp_path: Path
) -> None:
    outputs = make_outputs(tmp_path / "out", {"summary.csv": b"mean\n41.5\n"})
    threading.Timer(OUTAGE_SECONDS, late.start).start()

    started = time.monotonic()
    receipt = deliver_files(late.target, outputs, "t/hospital-a", deadline=started + 60)

    assert time.monotonic() - started >= OUTAGE_SECONDS
    assert receipt.files[0].bytes == len(b"mean\n41.5\n")
    assert late.stored("t/hospital-a/summary.csv") == b"mean\n41.5\n"


def test_connections_reset_during_an_outage_are_retried(late: LateService, tmp_path: Path) -> None:
    outputs = make_outputs(tmp_path / "out", {"a.bin": b"a" * 100_000})
    port = late.target.port
    outage = resetting(port, until=time.monotonic() + OUTAGE_SECONDS)
    threading.Thread(target=lambda: (outage.join(), late.start()), daemon=True).start()

    started = time.monotonic()
    receipt = deliver_files(late.target, outputs, "t/hospital-a", deadline=started + 60)

    assert time.monotonic() - started >= OUTAGE_SECONDS
    assert receipt.total_bytes == 100_000
    assert late.stored("t/hospital-a/a.bin") == b"a" * 100_000


def test_an_unreachable_target_is_given_up_at_the_deadline(
    late: LateService, tmp_path: Path
) -> None:
    outputs = make_outputs(tmp_path / "out", {"a": b"a"})
    port = late.target.port

    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        deliver_files(late.target, outputs, "t/hospital-a", deadline=started + 2)
    elapsed = time.monotonic() - started

    assert 2 <= elapsed < 2 + AT_ONCE_SECONDS
    message = str(caught.value)
    assert f"SFTP target 'ttp' (127.0.0.1:{port}): connecting: " in message
    assert "Connection refused" in message
    assert "(gave up after " in message


def fails_at_once(target: SftpTarget, outputs: Path, match: str) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=match) as caught:
        deliver_files(target, outputs, "t/hospital-a", deadline=started + 60)
    assert time.monotonic() - started < AT_ONCE_SECONDS
    assert "gave up" not in str(caught.value)


def test_a_host_key_mismatch_fails_at_once(late: LateService, tmp_path: Path) -> None:
    late.start_and_wait()
    other = make_key(tmp_path, "other-host")
    outputs = make_outputs(tmp_path / "out", {"a": b"a"})
    fails_at_once(replace(late.target, host_key=other.public_line), outputs, "not the host_key")


def test_a_refused_login_fails_at_once(late: LateService, tmp_path: Path) -> None:
    late.start_and_wait()
    stranger = make_key(tmp_path, "stranger")
    outputs = make_outputs(tmp_path / "out", {"a": b"a"})
    fails_at_once(replace(late.target, key=stranger.private), outputs, "refused user")


def test_a_quota_refusal_fails_at_once(tmp_path: Path) -> None:
    for ttp in start_ttp(tmp_path / "ttp", quota_bytes=1000):
        outputs = make_outputs(tmp_path / "out", {"big.bin": b"b" * 5000})
        fails_at_once(ttp.target, outputs, "refused the data")


def cut_off_and_come_back(
    first: SftpService, second: SftpService, folder: Path, cut: list[bool]
) -> None:
    """Stop ``first`` once an upload into ``folder`` has begun; start ``second`` a bit later."""
    while not (folder.is_dir() and any(folder.iterdir())):
        time.sleep(0.005)
    cut.append(not (folder / "big.bin").exists())
    first.stop()  # every session ends: the delivery's connection breaks
    time.sleep(OUTAGE_SECONDS)
    second.start()


def test_a_connection_broken_mid_upload_is_retried_and_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    big = b"z" * 30_000_000  # takes long enough to be cut off half way
    outputs = make_outputs(tmp_path / "out", {"big.bin": big})
    for ttp in start_ttp(tmp_path / "ttp"):
        folder = ttp.jail() / "incoming" / "t" / "hospital-a"
        second = SftpService(replace(ttp.service.config, port=ttp.target.port))
        cut: list[bool] = []
        outage = threading.Thread(
            target=cut_off_and_come_back, args=(ttp.service, second, folder, cut), daemon=True
        )
        outage.start()
        try:
            receipt = deliver_files(
                ttp.target, outputs, "t/hospital-a", deadline=time.monotonic() + 60
            )
        finally:
            outage.join(timeout=30)
            second.stop()

        assert cut == [True]  # the first attempt was cut off before the file was in place
        assert receipt.total_bytes == len(big)
        assert sorted(path.name for path in folder.iterdir()) == ["big.bin"]  # no .ptm-part-*
        assert (folder / "big.bin").stat().st_size == len(big)
