"""ptm sftp serve|host-key, and the SFTP service config: schema, loading, one message each."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from ptm.delivery import deliver_files
from ptm.errors import ConfigError, InvalidDocument, PtmError
from ptm.sftp_config import DEFAULT_MAX_FILE_BYTES, DEFAULT_QUOTA_BYTES, load_sftp_config
from ptm.siteconfig import SftpTarget
from tests.test_delivery import ACCOUNT, KeyPair, make_key, make_outputs, write_config

STARTUP_SECONDS = 30


@pytest.fixture
def site_key(tmp_path: Path) -> KeyPair:
    return make_key(tmp_path, "site")


def config_text(site_key: KeyPair, body: str) -> str:
    return body.replace("PUBLIC_KEY", json.dumps(site_key.public_line))


def load_text(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "sftp.yaml"
    path.write_text(text)
    return load_sftp_config(path)


# -- config -------------------------------------------------------------------------------------


def test_the_design_example_loads_with_paths_relative_to_the_file(
    tmp_path: Path, site_key: KeyPair
) -> None:
    text = config_text(
        site_key,
        "listen: 127.0.0.1:2222\nhost_key: host_key\nroot: /srv/ptm-incoming\n"
        "max_file_bytes: 1073741824\n"
        "accounts:\n  hospital-a: {public_key: PUBLIC_KEY, quota_bytes: 10737418240}\n"
        "  hospital-b: {public_key: PUBLIC_KEY}\n",
    )
    config = load_text(tmp_path, text)

    assert (config.host, config.port) == ("127.0.0.1", 2222)
    assert config.host_key == tmp_path / "host_key"
    assert config.root == Path("/srv/ptm-incoming")
    assert config.max_file_bytes == DEFAULT_MAX_FILE_BYTES
    assert config.accounts["hospital-a"].quota_bytes == 10 * 1024**3
    assert config.accounts["hospital-b"].quota_bytes == DEFAULT_QUOTA_BYTES
    assert config.accounts["hospital-a"].public_key.line == " ".join(
        site_key.public_line.split()[:2]
    )
    with pytest.raises(TypeError):
        config.accounts["x"] = config.accounts["hospital-a"]


def test_an_ipv6_listen_address(tmp_path: Path, site_key: KeyPair) -> None:
    text = config_text(
        site_key,
        "listen: '[::1]:0'\nhost_key: k\nroot: r\naccounts: {a: {public_key: PUBLIC_KEY}}\n",
    )
    config = load_text(tmp_path, text)
    assert (config.host, config.port, config.listen) == ("::1", 0, "[::1]:0")


BAD_CONFIGS = [
    pytest.param(
        "listn: 127.0.0.1:22\nlisten: 127.0.0.1:22\nhost_key: k\nroot: r\n"
        "accounts: {a: {public_key: PUBLIC_KEY}}\n",
        InvalidDocument,
        "sftp.yaml: (top level): unknown key 'listn' (did you mean 'listen'?) "
        "[additionalProperties]",
        id="unknown-key",
    ),
    pytest.param(
        "listen: 127.0.0.1:22\nhost_key: k\nroot: r\n"
        "accounts: {a: {public_key: PUBLIC_KEY, quota: 5}}\n",
        InvalidDocument,
        "sftp.yaml: accounts.a: unknown key 'quota' (did you mean 'quota_bytes'?) "
        "[additionalProperties]",
        id="unknown-account-key",
    ),
    pytest.param(
        "listen: 127.0.0.1:22\nhost_key: k\nroot: r\n"
        "accounts: {Hospital_A: {public_key: PUBLIC_KEY}}\n",
        InvalidDocument,
        "sftp.yaml: accounts: key 'Hospital_A': use a name like hospital-a",
        id="bad-account-name",
    ),
    pytest.param(
        "listen: 127.0.0.1:22\nhost_key: k\nroot: r\naccounts: {..: {public_key: PUBLIC_KEY}}\n",
        InvalidDocument,
        "sftp.yaml: accounts: key '..': use a name like hospital-a",
        id="dotdot-account-name",
    ),
    pytest.param(
        "listen: 127.0.0.1:22\nhost_key: k\nroot: r\naccounts: {a: {public_key: ssh-ed25519 !!}}\n",
        ConfigError,
        "sftp.yaml: accounts.a.public_key: the ssh-ed25519 key is not valid base64 key data "
        "[public-key]",
        id="bad-public-key",
    ),
    pytest.param(
        "listen: 127.0.0.1:70000\nhost_key: k\nroot: r\naccounts: {a: {public_key: PUBLIC_KEY}}\n",
        ConfigError,
        "sftp.yaml: listen: port 70000 is above 65535 [port]",
        id="port-range",
    ),
    pytest.param(
        "listen: localhost\nhost_key: k\nroot: r\naccounts: {a: {public_key: PUBLIC_KEY}}\n",
        InvalidDocument,
        "sftp.yaml: listen: 'localhost': use HOST:PORT",
        id="listen-without-host",
    ),
    pytest.param(
        "listen: 127.0.0.1:22\nhost_key: k\naccounts: {}\n",
        InvalidDocument,
        "sftp.yaml: (top level): missing required key 'root' [required]",
        id="missing-root",
    ),
    pytest.param(
        "listen: 127.0.0.1:22\nhost_key: k\nroot: r\nmax_file_bytes: 0\naccounts: {}\n",
        InvalidDocument,
        "sftp.yaml: max_file_bytes: must be at least 1, found 0 [minimum]",
        id="zero-max-file-bytes",
    ),
]


@pytest.mark.parametrize(("body", "error", "message"), BAD_CONFIGS)
def test_a_bad_config_gets_one_clear_message(
    tmp_path: Path, site_key: KeyPair, body: str, error: type[PtmError], message: str
) -> None:
    with pytest.raises(error) as caught:
        load_text(tmp_path, config_text(site_key, body))

    lines = str(caught.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(str(tmp_path / message))


def test_every_schema_property_has_a_description() -> None:
    schema = json.loads(resources.files("ptm.schemas").joinpath("sftp.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    missing = []

    def visit(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                if not prop.get("description"):
                    missing.append(f"{where}/properties/{name}")
            for key, value in node.items():
                visit(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                visit(value, f"{where}/{index}")

    visit(schema, "#")
    assert missing == []
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["account"]["additionalProperties"] is False


# -- the command --------------------------------------------------------------------------------


def ptm_command(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ptm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def read_line(process: subprocess.Popen[str], prefix: str) -> str:
    """The next stdout line of ``process``, which must start with ``prefix``."""
    assert process.stdout is not None
    watchdog = threading.Timer(STARTUP_SECONDS, process.kill)  # a hung start fails, not hangs
    watchdog.start()
    try:
        line = process.stdout.readline().rstrip("\n")
    finally:
        watchdog.cancel()
    if not line.startswith(prefix):
        process.kill()
        _, stderr = process.communicate(timeout=10)
        pytest.fail(f"expected {prefix!r}, got {line!r}; stderr:\n{stderr}")
    return line.removeprefix(prefix)


@pytest.fixture
def serving(tmp_path: Path, site_key: KeyPair) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    config = write_config(tmp_path, {ACCOUNT: {"public_key": site_key.public_line}})
    process = ptm_command("sftp", "serve", "--config", str(config))
    try:
        yield process, config
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_accepts_an_upload_and_stops_cleanly_on_a_signal(
    serving: tuple[subprocess.Popen[str], Path],
    tmp_path: Path,
    site_key: KeyPair,
    stop_signal: signal.Signals,
) -> None:
    process, _ = serving
    port = int(read_line(process, "ptm sftp: listening on 127.0.0.1:"))
    host_key = read_line(process, "ptm sftp: host key ")
    target = SftpTarget("ttp", "127.0.0.1", ACCOUNT, site_key.private, host_key, port=port)
    outputs = make_outputs(tmp_path / "out", {"summary.csv": b"mean\n41.5\n"})

    receipt = deliver_files(target, outputs, "age-stats/hospital-a")

    stored = tmp_path / "incoming" / ACCOUNT / "age-stats" / ACCOUNT / "summary.csv"
    assert stored.read_bytes() == b"mean\n41.5\n"
    assert receipt.files[0].bytes == len(b"mean\n41.5\n")
    process.send_signal(stop_signal)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "ptm sftp: stopped" in stdout
    assert f"account {ACCOUNT}: stored /age-stats/{ACCOUNT}/summary.csv" in stderr
    assert "listening on" not in stdout + stderr  # printed once, read above by read_line
    assert "PRIVATE KEY" not in stdout + stderr


def test_serve_with_a_bad_config_exits_1_with_one_message(
    tmp_path: Path, site_key: KeyPair
) -> None:
    config = write_config(tmp_path, {"Bad": {"public_key": site_key.public_line}})

    process = ptm_command("sftp", "serve", "--config", str(config))
    stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 1
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"ptm: error: {config}: accounts: key 'Bad': use a name like")
    assert not (tmp_path / "host_key").exists()


def test_serve_on_a_busy_port_exits_1(tmp_path: Path, site_key: KeyPair) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        accounts = {ACCOUNT: {"public_key": site_key.public_line}}
        config = write_config(tmp_path, accounts, listen=f"127.0.0.1:{port}")
        process = ptm_command("sftp", "serve", "--config", str(config))
        _, stderr = process.communicate(timeout=30)

    assert process.returncode == 1
    assert f"ptm: error: cannot listen on 127.0.0.1:{port}" in stderr


def test_host_key_prints_the_line_the_service_presents(
    serving: tuple[subprocess.Popen[str], Path],
) -> None:
    process, config = serving
    read_line(process, "ptm sftp: listening on ")
    served = read_line(process, "ptm sftp: host key ")

    printed = subprocess.run(
        [sys.executable, "-m", "ptm", "sftp", "host-key", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    assert printed == served
    assert printed.startswith("ssh-ed25519 AAAA")


def test_host_key_creates_the_key_when_missing(tmp_path: Path, site_key: KeyPair) -> None:
    config = write_config(tmp_path, {ACCOUNT: {"public_key": site_key.public_line}})

    first = subprocess.run(
        [sys.executable, "-m", "ptm", "sftp", "host-key", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    again = subprocess.run(
        [sys.executable, "-m", "ptm", "sftp", "host-key", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert first == again
    assert first.startswith("ssh-ed25519 AAAA")
    assert (tmp_path / "host_key").stat().st_mode & 0o777 == 0o600
