"""SFTP delivery against a real ptm SFTP service on a loopback port, with real ssh-keygen keys."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paramiko
import pytest
import yaml

from ptm.delivery import deliver_files, local_files
from ptm.errors import ConfigError, DeliveryError
from ptm.sftp_config import load_sftp_config
from ptm.sftp_server import SftpService
from ptm.siteconfig import SftpTarget
from ptm.ssh_keys import PublicKey

ACCOUNT = "hospital-a"
OTHER_ACCOUNT = "hospital-b"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public_line: str


def make_key(folder: Path, name: str, kind: str = "ed25519") -> KeyPair:
    """A real OpenSSH key pair made by ssh-keygen, without a passphrase."""
    path = folder / name
    command = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", name, "-f", str(path)]
    subprocess.run(command, check=True, capture_output=True)
    return KeyPair(path, path.with_suffix(".pub").read_text().strip())


def write_config(folder: Path, accounts: dict[str, Any], **settings: Any) -> Path:
    document: dict[str, Any] = {"listen": "127.0.0.1:0", "host_key": "host_key", "root": "incoming"}
    document.update(settings)
    document["accounts"] = accounts
    path = folder / "sftp.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@dataclass
class Ttp:
    """A running service, the key pairs of its two accounts, and the site's target for it."""

    service: SftpService
    root: Path
    site_key: KeyPair
    other_key: KeyPair
    target: SftpTarget

    def jail(self, account: str = ACCOUNT) -> Path:
        return self.root / account

    def client(self) -> paramiko.SFTPClient:
        return open_client(self.service, self.site_key)


def open_client(service: SftpService, key: KeyPair, user: str = ACCOUNT) -> paramiko.SFTPClient:
    """A plain paramiko SFTP client logged in to the service (for requests ptm never sends).

    Closing it closes its connection too.
    """
    host_key = service.host_key
    transport = paramiko.Transport(("127.0.0.1", service.port))
    transport.connect(
        hostkey=paramiko.PKey.from_type_string(host_key.key_type, host_key.blob),
        username=user,
        pkey=paramiko.PKey.from_path(key.private),
    )
    client = paramiko.SFTPClient.from_transport(transport)
    assert client is not None
    client.close = lambda: transport.close()  # type: ignore[method-assign]  # drop the connection
    return client


def start_ttp(folder: Path, **settings: Any) -> Iterator[Ttp]:
    keys = folder / "keys"
    keys.mkdir(parents=True)
    site_key, other_key = make_key(keys, "site"), make_key(keys, "other")
    quota = settings.pop("quota_bytes", None)
    account: dict[str, Any] = {"public_key": site_key.public_line}
    if quota is not None:
        account["quota_bytes"] = quota
    accounts = {ACCOUNT: account, OTHER_ACCOUNT: {"public_key": other_key.public_line}}
    for name, content in settings.pop("preload", {}).items():
        (folder / "incoming" / ACCOUNT).mkdir(parents=True, exist_ok=True)
        (folder / "incoming" / ACCOUNT / name).write_bytes(content)
    config = load_sftp_config(write_config(folder, accounts, **settings))
    with SftpService(config) as service:
        target = SftpTarget(
            name="ttp",
            host="127.0.0.1",
            user=ACCOUNT,
            key=site_key.private,
            host_key=service.host_key.line,
            port=service.port,
            path="/incoming",
        )
        yield Ttp(service, config.root, site_key, other_key, target)


@pytest.fixture
def ttp(tmp_path: Path) -> Iterator[Ttp]:
    yield from start_ttp(tmp_path / "ttp")


def make_outputs(folder: Path, files: dict[str, bytes]) -> Path:
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return folder


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


# -- uploads ------------------------------------------------------------------------------------


def test_upload_lands_in_the_account_folder_with_matching_checksums(
    ttp: Ttp, tmp_path: Path
) -> None:
    files = {"summary.csv": b"site,mean\na,41.5\n", "plots/age.png": os.urandom(700_000)}
    outputs = make_outputs(tmp_path / "out", files)

    receipt = deliver_files(ttp.target, outputs, "age-stats/hospital-a")

    delivered = ttp.jail() / "incoming" / "age-stats" / "hospital-a"
    assert receipt.remote_dir == "/incoming/age-stats/hospital-a"
    assert [(f.path, f.bytes, f.sha256) for f in receipt.files] == [
        ("plots/age.png", 700_000, sha256(files["plots/age.png"])),
        ("summary.csv", len(files["summary.csv"]), sha256(files["summary.csv"])),
    ]
    assert receipt.total_bytes == 700_000 + len(files["summary.csv"])
    assert all_files(delivered) == ["plots/age.png", "summary.csv"]  # no .ptm-part left behind
    for relative, content in files.items():
        assert sha256((delivered / relative).read_bytes()) == sha256(content)
        assert stat.S_IMODE((delivered / relative).stat().st_mode) == 0o600
    assert not (ttp.jail(OTHER_ACCOUNT) / "incoming").exists()


def test_default_path_is_the_account_folder_and_empty_outputs_still_make_the_folder(
    ttp: Ttp, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    target = replace(ttp.target, path=".")

    receipt = deliver_files(target, tmp_path / "empty", "t1/hospital-a")

    assert receipt.files == ()
    assert (ttp.jail() / "t1" / "hospital-a").is_dir()


def test_delivering_again_replaces_the_files_and_frees_their_quota(tmp_path: Path) -> None:
    # the new file is written beside the old one, then replaces it: 2000 bytes for a moment
    for ttp in start_ttp(tmp_path / "ttp", quota_bytes=2500):
        for attempt in b"123":
            outputs = make_outputs(tmp_path / f"out{attempt}", {"r.bin": bytes([attempt]) * 1000})
            deliver_files(ttp.target, outputs, "t/hospital-a")  # the third fails if not freed

        stored = ttp.jail() / "incoming" / "t" / "hospital-a"
        assert all_files(stored) == ["r.bin"]
        assert (stored / "r.bin").read_bytes() == b"3" * 1000


def test_several_sites_deliver_at_the_same_time(ttp: Ttp, tmp_path: Path) -> None:
    other_target = replace(ttp.target, user=OTHER_ACCOUNT, key=ttp.other_key.private)
    jobs = [(ttp.target if n % 2 else other_target, f"task-{n}") for n in range(6)]
    errors: list[BaseException] = []

    def deliver(target: SftpTarget, task: str) -> None:
        outputs = make_outputs(tmp_path / task, {"data.bin": task.encode() * 50_000})
        try:
            deliver_files(target, outputs, f"{task}/{target.user}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    for target, task in jobs:
        stored = ttp.root / target.user / "incoming" / task / target.user / "data.bin"
        assert stored.read_bytes() == task.encode() * 50_000


# -- trust --------------------------------------------------------------------------------------


def test_a_different_host_key_is_refused_before_logging_in(ttp: Ttp, tmp_path: Path) -> None:
    impostor = make_key(tmp_path, "impostor")
    target = replace(ttp.target, host_key=impostor.public_line)
    outputs = make_outputs(tmp_path / "out", {"secret.csv": b"id,diagnosis\n"})

    with pytest.raises(DeliveryError) as caught:
        deliver_files(target, outputs, "t/hospital-a")

    message = str(caught.value)
    assert "host key" in message
    assert f"127.0.0.1:{ttp.service.port}" in message
    assert ttp.service.host_key.fingerprint in message
    assert all_files(ttp.root) == []


def test_a_host_key_of_another_type_is_refused(ttp: Ttp, tmp_path: Path) -> None:
    rsa = make_key(tmp_path, "rsa-host", kind="rsa")
    target = replace(ttp.target, host_key=rsa.public_line)

    with pytest.raises(DeliveryError, match="host key"):
        deliver_files(target, make_outputs(tmp_path / "out", {"a": b"a"}), "t/hospital-a")
    assert all_files(ttp.root) == []


@pytest.mark.parametrize(
    "line", ["", "ssh-ed25519", "ssh-ed25519 not*base64", "ssh-dss AAAAB3NzaC1kc3M=", "AAAA"]
)
def test_a_malformed_host_key_line_is_refused_before_connecting(
    ttp: Ttp, tmp_path: Path, line: str
) -> None:
    target = replace(ttp.target, host_key=line, port=1)  # nothing listens on port 1

    with pytest.raises(DeliveryError, match="host_key"):
        deliver_files(target, make_outputs(tmp_path / "out", {"a": b"a"}), "t/hospital-a")


def test_a_host_key_line_holding_a_key_of_another_type_is_refused(tmp_path: Path) -> None:
    ed25519 = make_key(tmp_path, "host")
    mislabelled = "ssh-rsa " + ed25519.public_line.split()[1]

    assert PublicKey.parse(ed25519.public_line).key_type == "ssh-ed25519"
    with pytest.raises(ValueError, match="not valid"):
        PublicKey.parse(mislabelled)


def test_an_unknown_client_key_is_refused(ttp: Ttp, tmp_path: Path) -> None:
    stranger = make_key(tmp_path, "stranger")
    outputs = make_outputs(tmp_path / "out", {"a.csv": b"x"})

    with pytest.raises(DeliveryError) as caught:
        deliver_files(replace(ttp.target, key=stranger.private), outputs, "t/hospital-a")

    assert "refused user 'hospital-a'" in str(caught.value)
    assert str(stranger.private) in str(caught.value)
    assert all_files(ttp.root) == []


def test_another_accounts_key_does_not_open_this_account(ttp: Ttp, tmp_path: Path) -> None:
    target = replace(ttp.target, key=ttp.other_key.private)  # hospital-b's key, user hospital-a

    with pytest.raises(DeliveryError, match="refused user"):
        deliver_files(target, make_outputs(tmp_path / "out", {"a": b"a"}), "t/hospital-a")


def test_an_unknown_user_is_refused(ttp: Ttp, tmp_path: Path) -> None:
    target = replace(ttp.target, user="nobody")

    with pytest.raises(DeliveryError, match="refused user 'nobody'"):
        deliver_files(target, make_outputs(tmp_path / "out", {"a": b"a"}), "t/nobody")


def test_an_unreadable_client_key_is_reported_without_its_content(ttp: Ttp, tmp_path: Path) -> None:
    bad_key = tmp_path / "bad_key"
    bad_key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LXZhbHVl\n")
    outputs = make_outputs(tmp_path / "out", {"a": b"a"})

    with pytest.raises(DeliveryError) as caught:
        deliver_files(replace(ttp.target, key=bad_key), outputs, "t/hospital-a")
    assert str(bad_key) in str(caught.value)
    assert "c2VjcmV0LXZhbHVl" not in str(caught.value)

    locked = tmp_path / "locked_key"
    command = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "passphrase", "-f", str(locked)]
    subprocess.run(command, check=True, capture_output=True)
    with pytest.raises(DeliveryError, match="needs a passphrase"):
        deliver_files(replace(ttp.target, key=locked), outputs, "t/hospital-a")

    with pytest.raises(DeliveryError, match="missing_key: No such file"):
        deliver_files(replace(ttp.target, key=tmp_path / "missing_key"), outputs, "t/x")


# -- what the site sends ------------------------------------------------------------------------


def test_symlinks_in_the_outputs_are_refused_before_connecting(tmp_path: Path) -> None:
    outputs = make_outputs(tmp_path / "out", {"a.csv": b"a"})
    (tmp_path / "patients.csv").write_text("secret")
    (outputs / "link.csv").symlink_to(tmp_path / "patients.csv")

    with pytest.raises(DeliveryError, match=r"link\.csv: is not a regular file"):
        local_files(outputs)


@pytest.mark.parametrize("subdir", ["../t/site", "t/..", "/t/site", "t//site", "T/site", ""])
def test_a_remote_folder_must_be_made_of_names(ttp: Ttp, tmp_path: Path, subdir: str) -> None:
    with pytest.raises(DeliveryError, match="valid names"):
        deliver_files(ttp.target, make_outputs(tmp_path / "out", {"a": b"a"}), subdir)


# -- the jail -----------------------------------------------------------------------------------


def test_dotdot_and_absolute_paths_stay_inside_the_jail(ttp: Ttp) -> None:
    client = ttp.client()
    try:
        for path in ("../escape.txt", "/../escape.txt", "a/../../escape.txt", "/..", ".."):
            with pytest.raises(PermissionError):
                client.open(path, "wb").close()
        for path in ("../hospital-b", "/../hospital-b"):
            with pytest.raises(PermissionError):
                client.listdir(path)
            with pytest.raises(PermissionError):
                client.mkdir(path + "/x")
        with client.open("/etc-passwd", "wb") as handle:  # absolute means the jail's root
            handle.write(b"inside")
    finally:
        client.close()

    assert (ttp.jail() / "etc-passwd").read_bytes() == b"inside"
    assert names(ttp.root) == [ACCOUNT, OTHER_ACCOUNT]
    assert names(ttp.jail(OTHER_ACCOUNT)) == []


def test_symlinks_planted_in_the_jail_are_never_followed(ttp: Ttp, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not read")
    (ttp.jail() / "dir-link").symlink_to(outside)
    (ttp.jail() / "file-link").symlink_to(outside / "secret.txt")

    client = ttp.client()
    try:
        for path in ("dir-link/new.txt", "file-link", "/file-link"):
            with pytest.raises(OSError):
                client.open(path, "wb").close()
        with pytest.raises(OSError):
            client.open("file-link", "rb").read()
        with pytest.raises(OSError):
            client.listdir("dir-link")
        with pytest.raises(OSError):
            client.stat("dir-link/secret.txt")
        with pytest.raises(OSError):
            client.mkdir("dir-link/sub")
        attributes = client.stat("file-link")  # the link itself, not its target
        assert attributes.st_mode is not None and stat.S_ISLNK(attributes.st_mode)
        with pytest.raises(OSError):
            client.readlink("file-link")
        with pytest.raises(OSError):
            client.symlink(str(outside / "secret.txt"), "my-link")
    finally:
        client.close()

    assert names(outside) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "do not read"
    assert not (ttp.jail() / "my-link").exists()


def test_delivery_through_a_planted_symlink_is_refused(ttp: Ttp, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (ttp.jail() / "incoming").symlink_to(outside)

    with pytest.raises(DeliveryError, match="creating folder /incoming"):
        deliver_files(ttp.target, make_outputs(tmp_path / "out", {"a": b"a"}), "t/hospital-a")
    assert names(outside) == []


def test_listing_and_removing_own_files_works(ttp: Ttp, tmp_path: Path) -> None:
    deliver_files(ttp.target, make_outputs(tmp_path / "out", {"a.csv": b"abc"}), "t/hospital-a")
    client = ttp.client()
    try:
        assert client.listdir("/incoming/t/hospital-a") == ["a.csv"]
        assert client.stat("/incoming/t/hospital-a/a.csv").st_size == 3
        with client.open("/incoming/t/hospital-a/a.csv", "rb") as handle:
            assert handle.read() == b"abc"
        client.remove("/incoming/t/hospital-a/a.csv")
        client.rmdir("/incoming/t/hospital-a")
    finally:
        client.close()
    assert not (ttp.jail() / "incoming" / "t" / "hospital-a").exists()


# -- limits -------------------------------------------------------------------------------------


def test_a_file_over_max_file_bytes_is_refused(tmp_path: Path) -> None:
    for ttp in start_ttp(tmp_path / "ttp", max_file_bytes=100_000):
        fits = make_outputs(tmp_path / "fits", {"a.bin": b"a" * 100_000})
        deliver_files(ttp.target, fits, "fits/hospital-a")
        too_big = make_outputs(tmp_path / "big", {"ok.bin": b"o", "z.bin": b"b" * 100_001})

        with pytest.raises(DeliveryError) as caught:
            deliver_files(ttp.target, too_big, "big/hospital-a")

        assert "z.bin" in str(caught.value)
        assert "refused the data" in str(caught.value)
        assert all_files(ttp.jail() / "incoming" / "big") == ["hospital-a/ok.bin"]
        assert (ttp.jail() / "incoming" / "fits" / "hospital-a" / "a.bin").stat().st_size == 100_000


def test_a_write_beyond_max_file_bytes_at_any_offset_is_refused(tmp_path: Path) -> None:
    for ttp in start_ttp(tmp_path / "ttp", max_file_bytes=1000):
        client = ttp.client()
        try:
            with client.open("sparse.bin", "wb") as handle:
                handle.seek(5000)
                with pytest.raises(OSError):
                    handle.write(b"x")
                    handle.flush()
        finally:
            client.close()
        assert not (ttp.jail() / "sparse.bin").exists()  # a refused upload is removed


def test_the_quota_counts_existing_files_and_refuses_writes_beyond_it(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"quota_bytes": 500_000, "preload": {"old.bin": b"o" * 300_000}}
    for ttp in start_ttp(tmp_path / "ttp", **settings):
        outputs = make_outputs(tmp_path / "out", {"new.bin": b"n" * 250_000})

        with pytest.raises(DeliveryError, match=r"new\.bin.*refused the data"):
            deliver_files(ttp.target, outputs, "t/hospital-a")

        assert all_files(ttp.jail()) == ["old.bin"]  # the partial upload was removed
        client = ttp.client()
        try:
            client.remove("old.bin")  # frees its 300000 bytes
        finally:
            client.close()
        deliver_files(ttp.target, outputs, "t/hospital-a")
        assert all_files(ttp.jail()) == ["incoming/t/hospital-a/new.bin"]


def test_one_accounts_quota_does_not_limit_another(tmp_path: Path) -> None:
    for ttp in start_ttp(tmp_path / "ttp", quota_bytes=10):
        other = replace(ttp.target, user=OTHER_ACCOUNT, key=ttp.other_key.private)
        receipt = deliver_files(other, make_outputs(tmp_path / "o", {"a": b"a" * 1000}), "t/b")
        assert receipt.total_bytes == 1000


# -- the service --------------------------------------------------------------------------------


def test_the_host_key_is_created_once_with_mode_0600_and_kept(tmp_path: Path) -> None:
    site = make_key(tmp_path, "site")
    config = load_sftp_config(write_config(tmp_path, {ACCOUNT: {"public_key": site.public_line}}))

    with SftpService(config) as first:
        created = first.host_key
    assert stat.S_IMODE(config.host_key.stat().st_mode) == 0o600
    assert created.key_type == "ssh-ed25519"
    with SftpService(config) as second:
        assert second.host_key == created


def test_a_host_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    site = make_key(tmp_path, "site")
    config = load_sftp_config(write_config(tmp_path, {ACCOUNT: {"public_key": site.public_line}}))
    make_key(tmp_path, "host_key")
    config.host_key.chmod(0o644)

    with pytest.raises(ConfigError, match="chmod 600"):
        SftpService(config).start()


def test_an_existing_rsa_host_key_is_used(tmp_path: Path) -> None:
    site = make_key(tmp_path, "site")
    config = load_sftp_config(write_config(tmp_path, {ACCOUNT: {"public_key": site.public_line}}))
    host = make_key(tmp_path, "host_key", kind="rsa")
    outputs = make_outputs(tmp_path / "out", {"a": b"a"})

    with SftpService(config) as service:
        assert service.host_key.line == " ".join(host.public_line.split()[:2])
        target = SftpTarget(
            "ttp", "127.0.0.1", ACCOUNT, site.private, host.public_line, port=service.port
        )
        assert deliver_files(target, outputs, "t/hospital-a").files[0].bytes == 1


def test_stop_closes_sessions_frees_the_port_and_leaves_no_threads(
    ttp: Ttp, tmp_path: Path
) -> None:
    before = threading.active_count()
    service = SftpService(replace(ttp.service.config, root=tmp_path / "second"))
    target = replace(ttp.target, port=service.start())
    deliver_files(target, make_outputs(tmp_path / "out", {"a": b"a"}), "t/hospital-a")
    idle = open_client(service, ttp.site_key)  # a session still open while the service stops

    service.stop()

    with pytest.raises((OSError, paramiko.SSHException)):  # the connection is gone
        idle.listdir(".")
    idle.close()
    with pytest.raises(DeliveryError, match="connecting"):
        outputs = make_outputs(tmp_path / "out2", {"a": b"a"})
        deliver_files(target, outputs, "t/hospital-a", deadline=time.monotonic())  # no retry
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before
