"""A non-root agent (a ``ptm`` user in the ``docker`` group), as a site would run it under
systemd: it works, its work directory is 0700, and its run's output folder is never
world-writable."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.agent_support import Researcher, write_site_config
from tests.fixtures_docker import unavailable

pytestmark = pytest.mark.docker
AGENT_USER = "ptm-test-agent"
SYSTEM_PYTHON = Path("/usr/bin/python3")
RESULT = "results/as-user/hospital-a"


def ensure_agent_user() -> tuple[int, int]:
    if os.geteuid() != 0:
        unavailable("creating a non-root agent user needs root")
    try:
        grp.getgrnam("docker")
    except KeyError:
        unavailable("no docker group on this machine (Debian's docker.io makes it)")
    try:
        entry = pwd.getpwnam(AGENT_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--groups", "docker", AGENT_USER],
            check=True,
        )
        entry = pwd.getpwnam(AGENT_USER)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def agent_home() -> Iterator[Path]:
    """A folder the agent user owns, outside root's private temporary folders."""
    folder = Path(tempfile.mkdtemp(prefix="ptm-nonroot-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def ptm_command() -> list[str]:
    """``ptm`` through an interpreter the agent user can run, with this environment's packages
    (the virtual environment's own python may live under root's private home)."""
    if not SYSTEM_PYTHON.exists() or sys.version_info[:2] != (3, 11):
        unavailable("needs Debian's python3.11 beside a Python 3.11 virtual environment")
    folders = ", ".join(repr(p) for p in site.getsitepackages())
    code = (
        f"import site, sys\nfor p in ({folders},): site.addsitedir(p)\n"
        "from ptm.main import main\nsys.exit(main(sys.argv[1:]))"
    )
    return [str(SYSTEM_PYTHON), "-c", code]


def shown(registry: Path, name: str) -> str:
    """A file of the result, read as root from a registry the agent user owns."""
    return subprocess.run(
        ["git", "-c", "safe.directory=*", "show", f"results/hospital-a:{RESULT}/{name}"],
        cwd=registry,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_a_non_root_agent_runs_tasks_with_private_folders(
    agent_home: Path, test_image: str
) -> None:
    uid, gid = ensure_agent_user()
    registry = agent_home / "registry.git"
    from ptm.registry import init_registry

    init_registry(registry, bare=True)
    researcher = Researcher(registry, agent_home / "researcher")
    researcher.submit(
        "as-user", "id -u > /ptm/output/uid.txt; ls -ld /ptm/output > /ptm/output/mode.txt"
    )
    config = write_site_config(agent_home, "hospital-a", registry)
    subprocess.run(["chown", "-R", f"{uid}:{gid}", str(agent_home)], check=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(agent_home),
        "DOCKER_HOST": os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--init-groups",
            *ptm_command(),
            "agent",
            "once",
            "--config",
            str(config),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    status = yaml.safe_load(shown(registry, "status.yaml"))
    assert status["state"] == "completed", (status, done.stderr)
    assert shown(registry, "output/uid.txt").strip() == str(uid)  # containers run as the agent
    mode = shown(registry, "output/mode.txt")
    assert mode.startswith("drwx------"), mode  # the output folder is the container user's only
    workdir = yaml.safe_load(config.read_text())["workdir"]
    assert Path(workdir).stat().st_mode & 0o777 == 0o700
    assert not any(Path(workdir, "runs").iterdir())  # run folders are cleaned up


def test_a_root_agent_hands_the_output_folder_to_the_container_user_only(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    from tests.agent_support import remote_file, site_agent

    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("mode", "ls -ldn /ptm/output > /ptm/output/mode.txt")
    site_agent(tmp_path, "hospital-a", bare_registry).once()
    listing = remote_file(bare_registry, "mode", "output/mode.txt").split()
    assert listing[0] == "drwx------" and listing[2] == "65534", listing
