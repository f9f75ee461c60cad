"""``ptm audit`` over real history: signed tasks, signed and unsigned results, tampering."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ptm.main import main
from tests.agent_support import Researcher, remote_status, site_agent
from tests.fixtures_git import (
    SigningKey,
    clone,
    git,
    make_signing_key,
    sign_options,
    write_allowed_signers,
)

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
    assert rules(report) == set()  # the template's example lives outside tasks/
    assert code == 0
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


# ---- merges, cancels, key lifetimes and unreadable task folders ------------------------------


def signed_commit(work: Path, key: SigningKey | None, message: str, *paths: str) -> str:
    git(work, "add", *paths)
    git(work, *sign_options(key), "commit", "-q", "-m", message)
    return git(work, "rev-parse", "HEAD")


def write(work: Path, path: str, text: str) -> str:
    target = work / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return path


def audit_without_signers(registry: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    main(["audit", "--registry", str(registry)])
    return capsys.readouterr().out


def test_merges_on_the_tasks_branch(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "r", alice)
    researcher.submit("plain", image="evil/x:1")
    researcher.submit("tampered", image="evil/x:1")
    work = researcher.work
    git(work, "checkout", "-q", "-b", "pr")
    signed_commit(work, alice, "edit plain", write(work, "tasks/plain/files/a.txt", "a\n"))
    git(work, "checkout", "-q", "main")
    git(work, "merge", "-q", "--no-ff", "--no-gpg-sign", "-m", "Merge pull request #1", "pr")
    plain_merge = git(work, "rev-parse", "HEAD")
    git(work, "checkout", "-q", "-b", "pr2")
    signed_commit(work, alice, "notes", write(work, "NOTES.md", "n\n"))
    git(work, "checkout", "-q", "main")
    git(work, "merge", "-q", "--no-ff", "--no-commit", "pr2")
    evil = signed_commit(
        work, None, "Merge pull request #2", write(work, "tasks/tampered/files/b.txt", "b\n")
    )
    git(work, "push", "-q", "origin", "main")
    signers = write_allowed_signers(tmp_path / "signers", alice)
    code, report = audit(work, signers, capsys)
    found = rules(report)
    assert ("tampered", None, "evil-merge") in found
    assert ("tampered", None, "unsigned-task") in found
    assert not {f for f in found if f[0] == "plain"}
    tampered = next(t for t in report["tasks"] if t["task"] == "tampered")
    assert [(c["commit"], c["merge"], c["status"]) for c in tampered["commits"]][-1] == (
        evil,
        True,
        "N",
    )
    plain = next(t for t in report["tasks"] if t["task"] == "plain")
    assert plain_merge not in {c["commit"] for c in plain["commits"]}
    message = next(f["message"] for f in report["findings"] if f["rule"] == "evil-merge")
    assert f"merge commit {evil[:12]}" in message
    assert "brings content none of its parents had to tasks/tampered/" in message
    assert code == 1
    out = audit_without_signers(work, capsys)
    assert "[evil-merge]" in out  # found without any signature check, too
    assert "researcher@test.example (not checked)" in out


def test_merges_on_a_results_branch(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    site_key: SigningKey,
    docker_client: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "r", alice)
    researcher.submit("merged", image="evil/x:1")
    site_agent(tmp_path, "hospital-a", bare_registry, signing_key=str(site_key.private)).once()
    work = clone(bare_registry, tmp_path / "w")
    git(work, "checkout", "-q", "results/hospital-a")
    git(work, "checkout", "-q", "-b", "side")
    log = "results/merged/hospital-a/log.txt"
    signed_commit(work, site_key, "side note", write(work, log, "rewritten\n"))
    git(work, "checkout", "-q", "results/hospital-a")
    git(work, "merge", "-q", "--no-ff", "--no-gpg-sign", "-m", "merge side", "side")
    unsigned_merge = git(work, "rev-parse", "HEAD")
    git(work, "merge", "-q", "--no-gpg-sign", "--allow-unrelated-histories", "-m", "mix", "main")
    foreign_merge = git(work, "rev-parse", "HEAD")
    git(work, "push", "-q", "origin", "results/hospital-a")
    git(work, "checkout", "-q", "main")
    signers = write_allowed_signers(tmp_path / "signers", alice, site_key)
    code, report = audit(work, signers, capsys)
    found = rules(report)
    assert ("merged", "hospital-a", "unsigned-merge") in found
    messages = {f["message"] for f in report["findings"] if f["rule"] == "unsigned-merge"}
    assert any(unsigned_merge[:12] in m for m in messages)
    foreign = [f["message"] for f in report["findings"] if f["rule"] == "foreign-path"]
    assert any(
        f"merge commit {foreign_merge[:12]} on results/hospital-a brings in" in m for m in foreign
    )
    assert code == 1


def test_cancels_must_come_from_the_submitter_or_a_trusted_canceller(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    mallory: SigningKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "r", alice)
    researcher.submit("mine", image="evil/x:1")
    researcher.submit("theirs", image="evil/x:1")
    work = researcher.work
    signed_commit(work, alice, "cancel mine", write(work, "tasks/mine/cancel.yaml", "reason: x\n"))
    cancel = write(work, "tasks/theirs/cancel.yaml", "reason: y\n")
    stop = signed_commit(work, mallory, "stop theirs", cancel)
    git(work, "push", "-q", "origin", "main")
    signers = write_allowed_signers(tmp_path / "signers", alice, mallory)
    code, report = audit(work, signers, capsys)
    found = rules(report)
    assert code == 1
    assert ("theirs", None, "untrusted-cancel") in found
    assert ("mine", None, "untrusted-cancel") not in found
    message = next(f["message"] for f in report["findings"] if f["rule"] == "untrusted-cancel")
    assert stop[:12] in message and "'mallory@evil.example'" in message
    capsys.readouterr()
    main(
        [
            *("audit", "--registry", str(work), "--allowed-signers", str(signers)),
            *("--trusted-canceller", "mallory@evil.example", "--json"),
        ]
    )
    assert "untrusted-cancel" not in capsys.readouterr().out


def test_task_commits_are_checked_when_the_site_received_them(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    docker_client: object,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    yesterday = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y%m%d")
    signers = tmp_path / "signers"
    signers.write_text(
        f'{alice.principal} namespaces="git",valid-after="{yesterday}Z" {alice.public_line}\n'
    )
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2024-06-01T12:00:00Z")
    researcher = Researcher(bare_registry, tmp_path / "r", alice)
    researcher.submit("early", image="evil/x:1")
    monkeypatch.delenv("GIT_COMMITTER_DATE")
    _, report = audit(researcher.work, signers, capsys)
    assert ("early", None, "unsigned-task") in rules(report)  # no site saw it: commit date
    site_agent(tmp_path, "hospital-a", bare_registry).once()
    git(researcher.work, "fetch", "-q", "origin")
    _, report = audit(researcher.work, signers, capsys)
    assert ("early", None, "unsigned-task") not in rules(report)
    (task,) = [t for t in report["tasks"] if t["task"] == "early"]
    assert task["commits"][0]["status"] == "G"


def test_a_retired_key_backdated_commit_is_a_finding(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    docker_client: object,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signers = tmp_path / "signers"
    signers.write_text(
        f'{alice.principal} namespaces="git",valid-before="20250101Z" {alice.public_line}\n'
    )
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2024-06-01T12:00:00Z")
    researcher = Researcher(bare_registry, tmp_path / "r", alice)
    researcher.submit("late")
    monkeypatch.delenv("GIT_COMMITTER_DATE")
    policy = {"require_signed_tasks": True, "allowed_signers": str(signers)}
    site_agent(tmp_path, "hospital-a", bare_registry, policy=policy).once()
    status = remote_status(bare_registry, "late")
    assert status is not None and status["state"] == "rejected"
    assert "valid-before" in status["reason"]
    git(researcher.work, "fetch", "-q", "origin")
    _, report = audit(researcher.work, signers, capsys)
    message = next(
        f["message"]
        for f in report["findings"]
        if f["task"] == "late" and f["rule"] == "unsigned-task"
    )
    assert "expired before" in message


def test_an_unreadable_task_folder_is_a_finding_not_the_end(
    bare_registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "r")
    researcher.submit("fine", image="evil/x:1")
    work = researcher.work
    write(work, "tasks/Bad Name/task.yaml", "ptm: 1\n")
    write(work, "tasks/no-task-file/files/x.txt", "x\n")
    write(work, "tasks/broken/task.yaml", "ptm: [\n")
    signed_commit(work, None, "odd folders", "tasks")
    git(work, "push", "-q", "origin", "main")
    capsys.readouterr()
    code = main(["audit", "--registry", str(work), "--json"])
    report = json.loads(capsys.readouterr().out)
    found = rules(report)
    assert code == 1
    assert (None, None, "invalid-task-folder") in found
    assert ("no-task-file", None, "invalid-task") in found
    assert ("broken", None, "invalid-task") in found
    assert "fine" in {t["task"] for t in report["tasks"]}
