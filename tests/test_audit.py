"""``ptm audit`` over real history: signed tasks, signed and unsigned results, tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptm.main import main
from tests.agent_support import Researcher, site_agent
from tests.fixtures_git import SigningKey, clone, git, make_signing_key, write_allowed_signers

pytestmark = pytest.mark.docker


@pytest.fixture
def site_key(tmp_path: Path) -> SigningKey:
    return make_signing_key(tmp_path / "keys", "ptm-agent@hospital-a")


def audit(registry: Path, signers: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["audit", "--registry", str(registry), "--allowed-signers", str(signers), "--json"])
    return code, json.loads(capsys.readouterr().out)


def rules(report: dict) -> set[tuple[str | None, str | None, str]]:
    return {(f["task"], f["site"], f["rule"]) for f in report["findings"]}


def test_signed_task_and_signed_results_pass(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    site_key: SigningKey,
    docker_client: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "r", alice)
    researcher.submit("audited", image="evil/x:1")  # refused: no container needed
    site_agent(tmp_path, "hospital-a", bare_registry, signing_key=str(site_key.private)).once()
    signers = write_allowed_signers(tmp_path / "signers", alice, site_key)
    code, report = audit(researcher.work, signers, capsys)
    assert rules(report) == {("example", None, "unsigned-task")}  # the template's own commit
    assert code == 1
    task = next(t for t in report["tasks"] if t["task"] == "audited")
    assert [(c["status"], c["signer"]) for c in task["commits"]] == [("G", "alice@uni.example")]
    site = task["sites"][0]
    assert site["site"] == "hospital-a" and site["state"] == "rejected"
    assert {(c["status"], c["signer"]) for c in site["commits"]} == {("G", "ptm-agent@hospital-a")}


def test_unsigned_results_untrusted_tasks_and_later_edits_are_findings(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    mallory: SigningKey,
    docker_client: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "r", mallory)
    researcher.submit("edited", image="evil/x:1")
    site_agent(tmp_path, "hospital-a", bare_registry).once()
    researcher.commit_file("tasks/edited/files/late.txt", "sneaked in\n", "edit after the fact")
    signers = write_allowed_signers(tmp_path / "signers", alice)
    code, report = audit(researcher.work, signers, capsys)
    found = rules(report)
    assert code == 1
    assert ("edited", None, "unsigned-task") in found
    assert ("edited", "hospital-a", "unsigned-result") in found
    assert ("edited", "hospital-a", "changed-after-acted") in found


def test_a_site_writing_another_sites_results_is_a_finding(
    bare_registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = clone(bare_registry, tmp_path / "w")
    git(work, "checkout", "-q", "--orphan", "results/hospital-a")
    git(work, "rm", "-rqf", ".")
    forged = work / "results" / "t1" / "hospital-b"
    forged.mkdir(parents=True)
    (forged / "log.txt").write_text("forged\n")
    git(work, "add", "results")
    git(work, "commit", "-qm", "forge")
    git(work, "push", "-q", "origin", "results/hospital-a")
    git(work, "checkout", "-q", "main")
    capsys.readouterr()
    code = main(["audit", "--registry", str(work)])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "hospital-a: commit" in out and "[foreign-path]" in out
    assert "t1: results exist for a task that was never on the tasks branch" in out
    assert "Signatures were not checked" in out
