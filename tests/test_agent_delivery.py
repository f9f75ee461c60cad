"""Tasks that ask for delivery: outputs go to the trusted third party over SFTP, never onto the
public results branch."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ptm.main import main
from tests.agent_support import Researcher, remote_status, site_agent
from tests.fixtures_git import git
from tests.test_delivery import ACCOUNT, Ttp, start_ttp

pytestmark = pytest.mark.docker
SECRET = "id,age\n17,54\n"


@pytest.fixture
def ttp(tmp_path: Path) -> Iterator[Ttp]:
    yield from start_ttp(tmp_path / "ttp")


def sftp_targets(ttp: Ttp, **changes: object) -> dict[str, object]:
    target = {
        "host": "127.0.0.1",
        "port": ttp.service.port,
        "user": ACCOUNT,
        "key": str(ttp.site_key.private),
        "host_key": ttp.target.host_key,
        "path": "/incoming",
        **changes,
    }
    return {"ttp": target}


def submit_delivering_task(registry: Path, folder: Path) -> None:
    script = f"printf '{SECRET}' > /ptm/output/rows.csv"
    Researcher(registry, folder).submit("to-ttp", script.replace("\n", "\\n"), deliver_sftp="ttp")


def test_outputs_go_to_the_sftp_target_and_not_to_the_branch(
    bare_registry: Path,
    tmp_path: Path,
    ttp: Ttp,
    docker_client: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    submit_delivering_task(bare_registry, tmp_path / "r")
    agent = site_agent(tmp_path, "hospital-a", bare_registry, sftp_targets=sftp_targets(ttp))
    agent.once()
    status = remote_status(bare_registry, "to-ttp")
    assert status is not None and status["state"] == "completed", status
    delivered = ttp.jail() / "incoming" / "to-ttp" / "hospital-a" / "rows.csv"
    assert delivered.read_text() == SECRET
    assert status["delivered_to"].endswith("/incoming/to-ttp/hospital-a")
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    assert status["outputs"] == [
        {"path": "output/rows.csv", "bytes": len(SECRET), "sha256": digest}
    ]
    published = git(bare_registry, "ls-tree", "-r", "--name-only", "results/hospital-a")
    assert "results/to-ttp/hospital-a/output/rows.csv" not in published.split()
    assert "17,54" not in git(bare_registry, "log", "-p", "results/hospital-a")
    # The researcher sees where the outputs went, in ptm status and ptm results alike.
    clone = tmp_path / "researcher-view"
    git(tmp_path, "clone", "-q", str(bare_registry), str(clone))
    capsys.readouterr()
    assert main(["status", "to-ttp", "--registry", str(clone)]) == 0
    shown = capsys.readouterr().out
    assert "delivered to" in shown and "/incoming/to-ttp/hospital-a" in shown
    assert "(at the SFTP target, not in git)" in shown
    out = tmp_path / "collected"
    assert main(["results", "to-ttp", "--registry", str(clone), "--out", str(out)]) == 0
    assert "1 output file(s) were delivered to sftp://" in capsys.readouterr().out


def test_wrong_host_key_fails_and_publishes_nothing(
    bare_registry: Path, tmp_path: Path, ttp: Ttp, docker_client: object
) -> None:
    impostor = ttp.other_key.public_line  # a real key, but not the service's
    submit_delivering_task(bare_registry, tmp_path / "r")
    targets = sftp_targets(ttp, host_key=impostor)
    site_agent(tmp_path, "hospital-a", bare_registry, sftp_targets=targets).once()
    status = remote_status(bare_registry, "to-ttp")
    assert status is not None and status["state"] == "failed"
    assert "delivery to SFTP target 'ttp' failed" in status["reason"]
    assert "host key" in status["reason"]
    assert status["outputs"] == []
    assert "17,54" not in git(bare_registry, "log", "-p", "results/hospital-a")
    assert not (ttp.jail() / "incoming" / "to-ttp").exists()


def test_task_asking_for_an_unknown_target_is_rejected(
    bare_registry: Path, tmp_path: Path, docker_client: object
) -> None:
    submit_delivering_task(bare_registry, tmp_path / "r")
    site_agent(tmp_path, "hospital-a", bare_registry).once()
    status = remote_status(bare_registry, "to-ttp")
    assert status is not None and status["state"] == "rejected"
    assert "sftp_targets" in status["reason"]
