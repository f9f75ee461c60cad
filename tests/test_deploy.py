"""deploy/: the systemd units pass systemd-analyze (verify, and its offline security score),
the example configs load, and the files agree with each other on paths and users."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ptm.sftp_config import load_sftp_config
from ptm.siteconfig import load_site_config
from tests.fixtures_docker import unavailable

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNITS = {"ptm-agent@.service": "ptm-agent@hospital-a.service", "ptm-sftp.service": None}
INSTALLED_PTM = "/usr/local/bin/ptm"
HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "CapabilityBoundingSet=",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter=@system-service",
    "RestrictSUIDSGID=yes",
    "ProtectKernelTunables=yes",
    "ProtectControlGroups=yes",
)


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        unavailable("no systemd-analyze (run scripts/git-peers packages)")
    return found


def unit_to_check(name: str, folder: Path, text: str | None = None) -> Path:
    """The unit as an admin installs it, with ExecStart pointing at this test run's real ptm
    (systemd-analyze verify checks that the binary exists and is executable)."""
    source = (DEPLOY / name).read_text() if text is None else text
    ptm = Path(sys.executable).parent / "ptm"
    assert ptm.is_file()
    target = folder / (UNITS.get(name) or name)
    target.write_text(source.replace(INSTALLED_PTM, str(ptm)))
    return target


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("name", list(UNITS))
def test_unit_passes_systemd_analyze_verify_without_a_warning(name: str, tmp_path: Path) -> None:
    done = verify(unit_to_check(name, tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_verify_would_catch_a_mistyped_directive(tmp_path: Path) -> None:
    text = (DEPLOY / "ptm-sftp.service").read_text().replace("ProtectHome=", "ProtectHomes=")
    done = verify(unit_to_check("ptm-sftp.service", tmp_path, text))
    assert "Unknown key 'ProtectHomes'" in done.stderr


@pytest.mark.parametrize("name", list(UNITS))
def test_unit_scores_well_in_systemd_analyze_security(name: str, tmp_path: Path) -> None:
    unit = unit_to_check(name, tmp_path)
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert found is not None, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0  # systemd calls < 2 "OK"; an unhardened unit is 9.6


@pytest.mark.parametrize("name", list(UNITS))
def test_unit_is_hardened(name: str) -> None:
    lines = set((DEPLOY / name).read_text().splitlines())
    assert [d for d in HARDENING if d not in lines] == []
    assert not any(line.startswith("User=root") for line in lines)


def test_agent_unit_runs_as_ptm_with_docker_and_writes_only_its_state() -> None:
    lines = (DEPLOY / "ptm-agent@.service").read_text().splitlines()
    assert "User=ptm" in lines and "SupplementaryGroups=docker" in lines
    assert "ReadWritePaths=/var/lib/ptm" in lines
    assert f"ExecStart={INSTALLED_PTM} agent run --config /etc/ptm/%i.yaml" in lines


def test_site_example_loads_and_fits_the_agent_unit() -> None:
    config = load_site_config(DEPLOY / "site.example.yaml")
    assert config.site == "hospital-a"  # the unit's instance name
    assert config.workdir.is_relative_to("/var/lib/ptm")  # inside ReadWritePaths
    assert config.registry.known_hosts == Path("/etc/ptm/known_hosts")
    assert config.policy.require_signed_tasks and config.signing_key is not None


def test_sftp_example_loads_and_fits_the_sftp_unit() -> None:
    config = load_sftp_config(DEPLOY / "sftp.example.yaml")
    writable = next(
        line.split("=", 1)[1].split()
        for line in (DEPLOY / "ptm-sftp.service").read_text().splitlines()
        if line.startswith("ReadWritePaths=")
    )
    assert str(config.root) in writable
    assert str(config.host_key.parent) in writable
    assert config.port >= 1024  # the unit grants no CAP_NET_BIND_SERVICE
    assert list(config.accounts) == ["hospital-a"]


def test_containerfile_runs_the_agent_as_a_non_root_user() -> None:
    lines = [line.strip() for line in (DEPLOY / "Containerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    entrypoint = next(line for line in lines if line.startswith("ENTRYPOINT "))
    assert entrypoint == 'ENTRYPOINT ["ptm", "agent", "run", "--log-format", "json"]'
