"""Quotas of a real ``ptm sftp serve`` cannot be bypassed, by paramiko or OpenSSH's ``sftp``.

Each test changes the account's files in a way that could fool a naive count, then measures the
free quota exactly: one byte more than expected must be refused, the expected amount accepted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko
import pytest

from ptm.ssh_keys import PublicKey
from tests.fixtures_docker import unavailable
from tests.test_delivery import ACCOUNT, KeyPair, make_key, write_config
from tests.test_sftp_cmd import ptm_command, read_line

QUOTA = 1_000_000
MAX_FILE = 800_000
SETTLE_SECONDS = 10.0  # for the service to notice a client that went away


@dataclass(frozen=True)
class Served:
    """A running ``ptm sftp serve`` with one account limited to QUOTA bytes."""

    port: int
    host_key: str
    jail: Path
    key: KeyPair
    known_hosts: Path

    def paramiko(self) -> paramiko.SFTPClient:
        host_key = PublicKey.parse(self.host_key)
        transport = paramiko.Transport(("127.0.0.1", self.port))
        transport.connect(
            hostkey=paramiko.PKey.from_type_string(host_key.key_type, host_key.blob),
            username=ACCOUNT,
            pkey=paramiko.PKey.from_path(self.key.private),
        )
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        return client

    def openssh(self, *commands: str) -> subprocess.CompletedProcess[str]:
        """Run ``commands`` with ``sftp -b -``; a command fails the batch unless it starts '-'."""
        return subprocess.run(
            [*self.openssh_command(), f"{ACCOUNT}@127.0.0.1"],
            input="".join(f"{command}\n" for command in commands),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def openssh_command(self, *options: str) -> list[str]:
        settings = {
            "StrictHostKeyChecking": "yes",
            "UserKnownHostsFile": str(self.known_hosts),
            "BatchMode": "yes",
            "IdentitiesOnly": "yes",
        }
        pairs = [part for key, value in settings.items() for part in ("-o", f"{key}={value}")]
        command = ["sftp", "-b", "-", "-F", "/dev/null", "-i", str(self.key.private)]
        return [*command, "-P", str(self.port), *pairs, *options]

    def files(self) -> dict[str, int]:
        """name -> size of what the jail holds now (a file the server removes while it is
        being listed is not there)."""
        found = {}
        for path in self.jail.iterdir():
            try:
                found[path.name] = path.stat().st_size
            except FileNotFoundError:
                continue
        return found


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    if shutil.which("sftp") is None:
        unavailable("OpenSSH's sftp client is not installed (scripts/engine packages installs it)")
    key = make_key(tmp_path, "site")
    account = {"public_key": key.public_line, "quota_bytes": QUOTA}
    config = write_config(tmp_path, {ACCOUNT: account}, max_file_bytes=MAX_FILE)
    process = ptm_command("sftp", "serve", "--config", str(config))
    try:
        port = int(read_line(process, "ptm sftp: listening on 127.0.0.1:"))
        host_key = read_line(process, "ptm sftp: host key ")
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key}\n")
        yield Served(port, host_key, tmp_path / "incoming" / ACCOUNT, key, known_hosts)
    finally:
        process.kill()
        process.communicate(timeout=10)


def upload(client: paramiko.SFTPClient, name: str, size: int) -> None:
    with client.open(name, "wb") as handle:
        handle.write(b"x" * size)


def assert_free(served: Served, expected: int) -> None:
    """Exactly ``expected`` bytes of quota are free: that many fit, one more is refused."""
    client = served.paramiko()
    probes: list[str] = []
    try:
        while sum(served.files().get(name, 0) for name in probes) < expected:
            probes.append(f"probe-{len(probes)}")
            stored = sum(served.files().get(name, 0) for name in probes)
            try:
                upload(client, probes[-1], min(expected - stored, MAX_FILE))
            except OSError:
                pytest.fail(f"only {stored} of the {expected} bytes expected free could be used")
        with pytest.raises(OSError):
            upload(client, "probe-over", 1)
        assert "probe-over" not in served.files()  # the refused upload left nothing
    finally:
        for name in probes:
            client.remove(name)
        client.close()


# -- the two clients, behind one interface ------------------------------------------------------


class Client(Protocol):
    def put(self, local: Path, remote: str) -> bool: ...
    def rename(self, old: str, new: str) -> bool: ...
    def remove(self, path: str) -> bool: ...


@dataclass(frozen=True)
class Paramiko:
    served: Served

    def _do(self, request: str, *args: str) -> bool:
        client = self.served.paramiko()
        try:
            getattr(client, request)(*args)
        except OSError:
            return False
        finally:
            client.close()
        return True

    def put(self, local: Path, remote: str) -> bool:
        return self._do("put", str(local), remote)

    def rename(self, old: str, new: str) -> bool:
        return self._do("posix_rename", old, new)

    def remove(self, path: str) -> bool:
        return self._do("remove", path)


@dataclass(frozen=True)
class OpenSsh:
    served: Served

    def _do(self, command: str) -> bool:
        done = self.served.openssh(command)
        assert "Permission denied (publickey" not in done.stderr, done.stderr
        assert "Host key verification failed" not in done.stderr, done.stderr
        return done.returncode == 0

    def put(self, local: Path, remote: str) -> bool:
        return self._do(f"put {local} {remote}")

    def rename(self, old: str, new: str) -> bool:
        return self._do(f"rename {old} {new}")

    def remove(self, path: str) -> bool:
        return self._do(f"rm {path}")


@pytest.fixture(params=["paramiko", "openssh"])
def client(request: pytest.FixtureRequest, served: Served) -> Client:
    return Paramiko(served) if request.param == "paramiko" else OpenSsh(served)


def local_file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / f"local-{size}.bin"
    path.write_bytes(os.urandom(size))
    return path


# -- the cases ----------------------------------------------------------------------------------


def test_both_clients_upload_and_the_quota_counts_what_is_stored(
    served: Served, client: Client, tmp_path: Path
) -> None:
    assert client.put(local_file(tmp_path, 300_000), "a.bin")
    assert served.files() == {"a.bin": 300_000}
    assert_free(served, QUOTA - 300_000)


def test_renaming_a_file_onto_itself_frees_nothing(
    served: Served, client: Client, tmp_path: Path
) -> None:
    assert client.put(local_file(tmp_path, 600_000), "a.bin")

    client.rename("a.bin", "a.bin")  # paramiko's posix rename succeeds; OpenSSH's is refused

    assert served.files() == {"a.bin": 600_000}
    assert_free(served, QUOTA - 600_000)


def test_overwriting_a_file_counts_only_the_new_content(
    served: Served, client: Client, tmp_path: Path
) -> None:
    assert client.put(local_file(tmp_path, 600_000), "a.bin")
    assert client.put(local_file(tmp_path, 100_000), "a.bin")

    assert served.files() == {"a.bin": 100_000}
    assert_free(served, QUOTA - 100_000)


def test_renaming_onto_a_file_still_open_frees_it_only_when_closed(
    served: Served, client: Client, tmp_path: Path
) -> None:
    assert client.put(local_file(tmp_path, 500_000), "old.bin")
    assert client.put(local_file(tmp_path, 200_000), "new.bin")
    holder = served.paramiko()
    try:
        reading = holder.open("old.bin", "rb")
        replaced = client.rename("new.bin", "old.bin")  # OpenSSH's plain rename is refused
        assert_free(served, QUOTA - 700_000)  # the open file's bytes are still on disk
        reading.close()
    finally:
        holder.close()

    if replaced:
        assert served.files() == {"old.bin": 200_000}
        assert_free(served, QUOTA - 200_000)
    else:
        assert served.files() == {"old.bin": 500_000, "new.bin": 200_000}
        assert_free(served, QUOTA - 700_000)


def test_removing_a_file_still_open_frees_it_only_when_closed(
    served: Served, client: Client
) -> None:
    holder = served.paramiko()
    try:
        writing = holder.open("w.bin", "wb")
        writing.write(b"w" * 600_000)
        writing.flush()
        assert client.remove("w.bin")
        assert "w.bin" not in served.files()
        assert_free(served, QUOTA - 600_000)  # still held by the open handle
        writing.write(b"w" * 100_000)  # writes to the removed file count as well
        writing.flush()
        assert_free(served, QUOTA - 700_000)
        writing.close()
    finally:
        holder.close()

    assert served.files() == {}
    assert_free(served, QUOTA)


def test_truncating_a_file_another_session_writes_to_stays_exact(served: Served) -> None:
    first, second = served.paramiko(), served.paramiko()
    try:
        upload(first, "a.bin", 600_000)
        writing = first.open("a.bin", "r+")
        second.open("a.bin", "wb").close()  # truncates: the 600000 bytes are free again
        assert_free(served, QUOTA)
        writing.seek(500_000)
        writing.write(b"y" * 100)  # the file now holds 500100 bytes (sparse, but counted)
        writing.close()
    finally:
        first.close()
        second.close()

    assert served.files() == {"a.bin": 500_100}
    assert_free(served, QUOTA - 500_100)


def test_an_upload_refused_by_the_quota_mid_file_leaves_nothing(
    served: Served, client: Client, tmp_path: Path
) -> None:
    assert client.put(local_file(tmp_path, 600_000), "keep.bin")

    assert not client.put(local_file(tmp_path, 500_000), "big.bin")

    assert served.files() == {"keep.bin": 600_000}
    assert_free(served, QUOTA - 600_000)


def test_an_upload_over_max_file_bytes_leaves_nothing(
    served: Served, client: Client, tmp_path: Path
) -> None:
    assert not client.put(local_file(tmp_path, MAX_FILE + 1), "big.bin")

    assert served.files() == {}
    assert_free(served, QUOTA)


def wait_for(condition: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {SETTLE_SECONDS}s for {condition}")
        time.sleep(0.05)


def test_an_upload_paramiko_abandons_by_disconnecting_is_removed(served: Served) -> None:
    client = served.paramiko()
    writing = client.open("partial.bin", "wb")
    writing.write(b"p" * 600_000)
    writing.flush()
    assert served.files() == {"partial.bin": 600_000}

    channel = client.get_channel()
    assert channel is not None
    channel.get_transport().close()  # the connection ends without closing the file

    wait_for("the partial upload to be removed", lambda: served.files() == {})
    assert_free(served, QUOTA)


def test_an_upload_openssh_abandons_mid_file_is_removed(served: Served, tmp_path: Path) -> None:
    local = local_file(tmp_path, 700_000)
    slow = served.openssh_command("-l", "800")  # 100 kB/s: the upload takes seconds
    process = subprocess.Popen(
        [*slow, f"{ACCOUNT}@127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own group, so the ssh it runs is killed with it
    )
    try:
        assert process.stdin is not None
        process.stdin.write(f"put {local} partial.bin\n")
        process.stdin.flush()
        wait_for("the upload to start", lambda: served.files().get("partial.bin", 0) > 0)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    wait_for("the partial upload to be removed", lambda: served.files() == {})
    assert_free(served, QUOTA)
