"""The README's site admin and third-party walk-throughs, as written: the third party's sftp.yaml
and commands, the site admin's example config and the commands of "Run", against a real sshd
serving the registry, a real ``ptm sftp serve`` and the real engine.

The README's examples name hosts and folders of a real site (``git.example.org``, ``/etc/ptm``);
the test takes each block verbatim and replaces only those, through ``LOCAL`` maps whose every
key must occur in the block (so an edit of the README that drops one fails here, not silently).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest

from ptm import __version__
from tests.agent_support import Researcher, remote_status
from tests.fixtures_git import SigningKey, make_signing_key, write_allowed_signers
from tests.readme_session import assert_shown_in, blocks, run_step, section, sessions
from tests.ssh_servers import SshServer, make_ssh_key, running_sshd

pytestmark = pytest.mark.docker

SITE_IMAGE = "myconsortium/age-stats:1.2"  # what the README's allow-list and log lines name
STARTUP_SECONDS = 60


def localized(text: str, replacements: Mapping[str, str]) -> str:
    """``text`` with each README placeholder replaced; every one must be there."""
    for placeholder, value in replacements.items():
        assert placeholder in text, f"the README's block no longer has {placeholder!r}"
        text = text.replace(placeholder, value)
    return text


def yaml_block(title: str, *, first_line: str) -> str:
    (block,) = [b for b in blocks(section(title), language="yaml") if b[0].startswith(first_line)]
    return "\n".join(block) + "\n"


def sh_commands(title: str, *, extra: str | None = None) -> list[str]:
    """The ``ptm`` commands of the first ``sh`` block of ``title``. An install line there must
    install this version of ptm with ``extra`` (this test runs in an environment that has it)."""
    (first, *_) = blocks(section(title), language="sh")
    commands = [line.split("#")[0].strip() for line in first if line.strip()]
    installs = [c for c in commands if not c.startswith("ptm ")]
    wanted = f'pip install "ptm-health-train[{extra}]=={__version__}"'
    assert installs == ([wanted] if extra else []), installs
    return [c for c in commands if c.startswith("ptm ")]


def ptm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ptm", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def command_args(command: str) -> list[str]:
    assert command.startswith("ptm "), command
    return command.split()[1:]


def read_until(stream: Iterator[str], pattern: str, process: subprocess.Popen[str]) -> str:
    """The lines of ``stream`` up to one matching ``pattern``, which is the last of them (a
    hung process fails, not hangs)."""
    watchdog = threading.Timer(STARTUP_SECONDS, process.kill)
    watchdog.start()
    seen: list[str] = []
    try:
        for line in stream:
            seen.append(line)
            if re.search(pattern, line):
                return "".join(seen).rstrip("\n")
    finally:
        watchdog.cancel()
    pytest.fail(f"no line matching {pattern!r}; got:\n{''.join(seen)}")


# -- the third party --------------------------------------------------------------------------


def third_party(folder: Path, site_public_key: str) -> Path:
    """The README's sftp.yaml, for this machine."""
    folder.mkdir(parents=True)
    text = localized(
        yaml_block("### Delivery to a trusted third party", first_line="listen:"),
        {
            "0.0.0.0:2222": "127.0.0.1:0",
            "/srv/ptm-incoming": str(folder / "srv" / "ptm-incoming"),
            '"ssh-ed25519 AAAA…"': f'"{site_public_key}"',
        },
    )
    config = folder / "sftp.yaml"
    config.write_text(text)
    # The folder the site's sftp_targets.ttp.path names, in the account's jail.
    (folder / "srv" / "ptm-incoming" / "hospital-a" / "incoming").mkdir(parents=True)
    return config


@pytest.fixture
def sftp_serving(tmp_path: Path) -> Iterator[tuple[Path, str, int, Path]]:
    """The third party's service started by the README's commands: (site key, host key line,
    port, the account's incoming folder)."""
    site_key = make_ssh_key(tmp_path / "etc" / "ptm", "ttp_key")
    config = third_party(tmp_path / "ttp", site_key.public_line)
    serve, host_key = sh_commands("### Delivery to a trusted third party", extra="sftp")
    shown = ptm(*command_args(host_key), cwd=config.parent)
    assert shown.returncode == 0, shown.stderr
    host_key_line = shown.stdout.strip()
    assert re.fullmatch(r"ssh-ed25519 [A-Za-z0-9+/=]+", host_key_line), host_key_line
    process = subprocess.Popen(
        [sys.executable, "-m", "ptm", *command_args(serve)],
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        listening = read_until(process.stdout, r"listening on 127\.0\.0\.1:\d+", process)
        presented = read_until(process.stdout, r"host key ", process)
        assert "\n" not in listening + presented  # each printed once, nothing between
        assert presented.endswith(host_key_line)  # what sites put in host_key is what it shows
        port = int(listening.rsplit(":", 1)[1])
        yield site_key.private, host_key_line, port, config.parent / "srv" / "ptm-incoming"
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert "ptm sftp: stopped" in stdout


# -- the site admin ---------------------------------------------------------------------------


def site_files(root: Path, server: SshServer, researchers: list[SigningKey]) -> None:
    """What the README's config names under /etc/ptm and /srv, made for real."""
    etc = root / "etc" / "ptm"
    server.known_hosts(etc / "known_hosts")
    write_allowed_signers(etc / "allowed_signers", *researchers)
    make_ssh_key(etc, "site_key")
    (root / "srv" / "data").mkdir(parents=True)
    (root / "srv" / "data" / "ages.csv").write_text("age\n40\n43\n")


def site_config(
    root: Path, registry_url: str, ttp: tuple[Path, str, int, Path], deploy_key: Path
) -> Path:
    _, host_key_line, port, _ = ttp
    text = localized(
        yaml_block("### Configure", first_line="ptm: 1"),
        {
            "ssh://git@git.example.org/consortium/registry.git": registry_url,
            "/etc/ptm/deploy_key": str(deploy_key),
            "/etc/ptm/": f"{root}/etc/ptm/",
            "/var/lib/ptm": f"{root}/var/lib/ptm",
            "/srv/data": f"{root}/srv/data",
            "unix:///var/run/docker.sock": os.environ.get(
                "DOCKER_HOST", "unix:///var/run/docker.sock"
            ),
            # The tests have no way to the public image registry; the image is already here.
            "pull: always": "pull: if-missing",
            "host: ttp.example.org, port: 22": f"host: 127.0.0.1, port: {port}",
            '"ssh-ed25519 AAAA…"': f'"{host_key_line}"',
        },
    )
    path = root / "site.yaml"
    path.write_text(text)
    return path


def check_lines(output: str) -> list[tuple[str, str]]:
    """(ok|FAIL, name) of each line of ``ptm agent check``."""
    found = re.findall(r"^(ok|FAIL) +([\w:]+): ", output, re.MULTILINE)
    return [(status, name) for status, name in found]


@contextmanager
def readme_site(
    root: Path,
    registry: Path,
    ttp: tuple[Path, str, int, Path],
    researchers: list[SigningKey],
) -> Iterator[tuple[Path, str]]:
    """The README's site: its config, for a real sshd serving ``registry``: (config, url)."""
    deploy = make_ssh_key(root / "deploy", "deploy_key")
    with running_sshd(root / "sshd", [deploy.public_line]) as server:
        site_files(root, server, researchers)
        url = server.url(str(registry).lstrip("/"))
        yield site_config(root, url, ttp, deploy.private), url


def test_the_site_admin_and_third_party_sessions_work_as_written(
    tmp_path: Path,
    bare_registry: Path,
    sftp_serving: tuple[Path, str, int, Path],
    docker_client: docker.DockerClient,
    test_image: str,
) -> None:
    docker_client.images.get(test_image).tag(SITE_IMAGE)
    alice = make_signing_key(tmp_path / "keys", "alice@uni.example")
    researcher = Researcher(bare_registry, tmp_path / "alice", key=alice)
    script = "cat /data/ages.csv > $PTM_OUTPUT/ages.csv; echo done"
    researcher.submit("age-stats", script, image=SITE_IMAGE, deliver_sftp="ttp")
    researcher.submit("other", "true", image="evil/x:1")
    with readme_site(tmp_path, bare_registry, sftp_serving, [alice]) as (config, url):
        check, run, once, status = sh_commands("### Run")

        checked = ptm(*command_args(check), cwd=tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        (shown,) = [s for s in sessions(section("### Run")) if s.command.startswith("ptm agent")]
        readme_checks = [name for _, name in check_lines("\n".join(shown.shown))]
        assert check_lines(checked.stdout) == [("ok", name) for name in readme_checks]
        assert f"ok   config:           {config.name}: valid, site 'hospital-a'" in checked.stdout
        assert checked.stdout.rstrip().endswith("All checks passed.")

        logged = agent_run_log(command_args(run), tmp_path)
        readme_log = next(b for b in blocks(section("### Run")) if "ptm agent 0.1.0" in b[0])
        assert_log_matches(readme_log, logged, url)

        done = ptm(*command_args(once), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        overview = ptm(*command_args(status), cwd=tmp_path)
        assert overview.returncode == 0, overview.stderr
        assert re.search(r"age-stats\s+completed", overview.stdout), overview.stdout
        assert re.search(r"other\s+rejected", overview.stdout), overview.stdout

    delivered = (
        sftp_serving[3] / "hospital-a" / "incoming" / "age-stats" / "hospital-a" / "ages.csv"
    )
    assert delivered.read_text() == "age\n40\n43\n"  # the site's data, read-only mounted
    published = remote_status(bare_registry, "age-stats")
    assert published is not None and published["state"] == "completed"
    port = sftp_serving[2]
    assert published["delivered_to"] == f"sftp://127.0.0.1:{port}/incoming/age-stats/hospital-a"


def test_the_policy_explain_session_works_as_written(
    tmp_path: Path,
    bare_registry: Path,
    sftp_serving: tuple[Path, str, int, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A signer the site knows but does not trust submits an image it does not allow."""
    alice = make_signing_key(tmp_path / "keys", "alice@uni.example")
    mallory = make_signing_key(tmp_path / "keys", "mallory@evil.example")
    researcher = Researcher(bare_registry, tmp_path / "mallory", key=mallory)
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "mallory@evil.example")
    researcher.submit("age-stats", "true", image="evil/stats:1")
    with readme_site(tmp_path, bare_registry, sftp_serving, [alice, mallory]):
        (step,) = sessions(section("### Policy"))
        _, done = run_step(step, tmp_path, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr  # it would refuse
    assert_shown_in(step.shown, done.stdout, tmp_path)
    broken = [line for line in done.stdout.splitlines() if line.startswith("  - ")]
    assert len(broken) == 2  # no rule broken besides the two the README shows
    assert remote_status(bare_registry, "age-stats") is None  # explaining decides nothing


def agent_run_log(args: list[str], cwd: Path) -> str:
    """``ptm agent run`` until both tasks are decided and ended, then SIGTERM: its log."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ptm", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = iter(process.stderr)
    log = [read_until(lines, r"started for site hospital-a", process)]
    log.append(read_until(lines, r"task other rejected", process))
    log.append(read_until(lines, r"task age-stats completed", process))
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    return "\n".join(log) + "\n" + (rest or "")


def assert_log_matches(readme: list[str], logged: str, url: str) -> None:
    """Each README log line, its time and version aside, is one the agent wrote."""
    actual = [_log_shape(line, url) for line in logged.splitlines()]
    for line in readme:
        wanted = _log_shape(line, "ssh://git@git.example.org/consortium/registry.git")
        assert wanted in actual, f"README log line not logged: {wanted!r}\n{logged}"


def _log_shape(line: str, url: str) -> str:
    line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?", "<time>", line.strip())
    line = re.sub(r"ptm agent \d+\.\d+\.\d+\S*", "ptm agent <version>", line)
    return line.replace(url, "<registry>")
