"""The policy: pure decisions, and ``ptm policy explain`` over real signed commits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ptm.gitrepo import SignatureCheck
from ptm.main import main
from ptm.policy import Evidence, decide
from ptm.siteconfig import SiteConfig
from ptm.submission import TaskDraft, write_task
from ptm.task import Task
from tests.agent_support import Researcher, write_site_config
from tests.fixtures_git import SigningKey, git, sign_options, write_allowed_signers

DIGEST = "sha256:" + "a" * 64


def site(**policy: Any) -> SiteConfig:
    document = {
        "ptm": 1,
        "site": "hospital-a",
        "registry": {"url": "/srv/registry.git"},
        "policy": {
            "allowed_images": ["myconsortium/.*:.*", f"pinned/app@{DIGEST}"],
            "require_signed_tasks": False,
            **policy,
        },
        "limits": {"timeout": 600, "memory": "1g", "cpus": 2},
        "sftp_targets": {
            "ttp": {
                "host": "ttp.example",
                "user": "a",
                "key": "k",
                "host_key": "ssh-ed25519 AAAA",
                "path": "/in",
            }
        },
    }
    return SiteConfig.from_document(document, source="site.yaml", base_dir=Path("/etc/ptm"))


def task(**fields: Any) -> Task:
    document = {"ptm": 1, "image": "myconsortium/stats:1", "sites": ["hospital-a"], **fields}
    return Task.from_document("t1", document)


def signature(status: str = "G", signer: str = "alice@uni.example") -> SignatureCheck:
    return SignatureCheck("c" * 40, status, signer, "SHA256:x", "alice@uni.example", "Submit t1")


def test_plain_allowed_task_is_accepted() -> None:
    decision = decide(task(), site(), Evidence())
    assert decision.accepted and decision.reasons == ()


@pytest.mark.parametrize(
    "image",
    [
        "evil/myconsortium/stats:1",
        "myconsortium/stats",
        "MyConsortium/stats:1",
        "myconsortium/stats:1\n",
    ],
)
def test_allow_list_is_a_full_match(image: str) -> None:
    assert not site().image_allowed(image)


@pytest.mark.parametrize("image", ["evil/myconsortium/stats:1", "myconsortium/stats"])
def test_image_outside_allow_list_is_refused_naming_the_setting(image: str) -> None:
    decision = decide(task(image=image), site(), Evidence())
    assert not decision.accepted
    assert "policy.allowed_images" in decision.summary()


def test_digest_entries_admit_exactly_that_digest() -> None:
    assert decide(task(image=f"pinned/app@{DIGEST}"), site(), Evidence()).accepted
    other = "sha256:" + "b" * 64
    assert not decide(task(image=f"pinned/app@{other}"), site(), Evidence()).accepted


def test_require_digest_refuses_tags() -> None:
    decision = decide(task(), site(require_digest=True), Evidence())
    assert "policy.require_digest" in decision.summary()


def test_every_broken_rule_is_listed() -> None:
    greedy = task(
        image="evil/x:1",
        timeout=601,
        resources={"memory": "2g", "cpus": 3},
        deliver={"sftp": "elsewhere"},
    )
    reasons = decide(greedy, site(), Evidence()).summary()
    for setting in (
        "policy.allowed_images",
        "limits.timeout",
        "limits.memory",
        "limits.cpus",
        "sftp_targets",
    ):
        assert setting in reasons
    assert "memory request of 2 GiB is above this site's cap of 1 GiB" in reasons
    assert "timeout 601s (10 minutes) is above this site's cap of 600s (10 minutes)" in reasons


def test_task_for_other_site_is_not_for_this_site() -> None:
    decision = decide(task(sites=["hospital-b"]), site(), Evidence())
    assert not decision.for_this_site and not decision.accepted


def signed_site(signers: Path, **policy: Any) -> SiteConfig:
    return site(
        require_signed_tasks=True,
        allowed_signers=str(signers),
        trusted_submitters=["alice@uni.example"],
        **policy,
    )


def test_signatures_decide(tmp_path: Path) -> None:
    signers = tmp_path / "allowed"
    signers.write_text("")
    config = signed_site(signers)
    assert decide(task(), config, Evidence((signature(),))).accepted
    assert decide(task(), config, Evidence((signature(),))).submitted_by == "alice@uni.example"
    unsigned = decide(task(), config, Evidence((signature("N", ""),)))
    assert "no signature" in unsigned.summary()
    untrusted = decide(task(), config, Evidence((signature("G", "mallory@evil.example"),)))
    assert "not a trusted submitter" in untrusted.summary()
    assert "no commit" in decide(task(), config, Evidence(())).summary()


# ---- policy explain with real signed commits ----------------------------------------------


@pytest.fixture
def signers_file(tmp_path: Path, alice: SigningKey, mallory: SigningKey) -> Path:
    return write_allowed_signers(tmp_path / "allowed_signers", alice, mallory)


def explain(
    tmp_path: Path,
    registry: Path,
    signers: Path,
    task_id: str,
    capsys: pytest.CaptureFixture[str],
    **policy: Any,
) -> tuple[int, str]:
    config = write_site_config(
        tmp_path,
        "hospital-a",
        registry,
        policy={
            "require_signed_tasks": True,
            "allowed_signers": str(signers),
            "trusted_submitters": ["alice@uni.example"],
            **policy,
        },
    )
    capsys.readouterr()
    code = main(["policy", "explain", task_id, "--config", str(config)])
    return code, capsys.readouterr().out


def test_explain_accepts_task_signed_by_trusted_researcher(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    signers_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    Researcher(bare_registry, tmp_path / "r", alice).submit("good")
    code, out = explain(tmp_path, bare_registry, signers_file, "good", capsys)
    assert code == 0, out
    assert "would run task good" in out and "submitted by alice@uni.example" in out


def test_explain_says_an_encrypted_task_would_fail_without_a_key_to_encrypt_to(
    bare_registry: Path,
    tmp_path: Path,
    signers_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    Researcher(bare_registry, tmp_path / "r").submit("secret", encrypt=True)  # unsigned
    code, out = explain(
        tmp_path, bare_registry, signers_file, "secret", capsys, require_signed_tasks=False
    )
    assert code == 1, out
    assert "would accept task secret, but it would fail before running:" in out
    assert "no verified submitter signed it" in out
    capsys.readouterr()
    config = tmp_path / "hospital-a.yaml"
    assert main(["policy", "explain", "secret", "--config", str(config), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["would_run"] is False and "no verified submitter" in document["would_fail"]


def test_explain_of_a_signed_encrypted_task_finds_its_key(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    signers_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    Researcher(bare_registry, tmp_path / "r", alice).submit("secret", encrypt=True)
    code, out = explain(tmp_path, bare_registry, signers_file, "secret", capsys)
    assert code == 0, out
    assert "would run task secret" in out and "fail" not in out


def test_explain_refuses_untrusted_and_unsigned(
    bare_registry: Path,
    tmp_path: Path,
    mallory: SigningKey,
    signers_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    Researcher(bare_registry, tmp_path / "m", mallory).submit("sneaky")
    Researcher(bare_registry, tmp_path / "u").submit("unsigned")
    code, out = explain(tmp_path, bare_registry, signers_file, "sneaky", capsys)
    assert code == 1 and "'mallory@evil.example', who is not a trusted submitter" in out
    code, out = explain(tmp_path, bare_registry, signers_file, "unsigned", capsys)
    assert code == 1 and "no signature" in out


def test_unsigned_follow_up_commit_taints_a_signed_task(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    signers_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "r", alice)
    researcher.submit("edited")
    researcher.commit_file("tasks/edited/files/extra.txt", "slipped in\n", "unsigned addition")
    code, out = explain(tmp_path, bare_registry, signers_file, "edited", capsys)
    assert code == 1 and "unsigned addition" in out and "no signature" in out


def test_key_not_in_allowed_signers_is_refused(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    Researcher(bare_registry, tmp_path / "r", alice).submit("stranger")
    empty = tmp_path / "nobody"
    empty.write_text("")
    code, out = explain(tmp_path, bare_registry, empty, "stranger", capsys)
    assert code == 1 and "not in the allowed signers file" in out


def test_merge_commit_bringing_in_signed_commits_is_fine(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    signers_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "r", alice)
    work = researcher.work
    git(work, "checkout", "-q", "-b", "proposal")
    write_task(work, TaskDraft("via-pr", "myconsortium/stats:1", ("hospital-a",)))
    git(work, "add", "tasks/via-pr")
    git(
        work,
        "-c",
        "gpg.format=ssh",
        "-c",
        f"user.signingkey={alice.private}",
        "commit",
        "-q",
        "-S",
        "-m",
        "Propose via-pr",
    )
    git(work, "checkout", "-q", "main")
    git(work, "merge", "-q", "--no-ff", "--no-gpg-sign", "-m", "Merge pull request", "proposal")
    git(work, "push", "-q", "origin", "main")
    code, out = explain(
        tmp_path,
        bare_registry,
        signers_file,
        "via-pr",
        capsys,
        allowed_images=["myconsortium/.*:.*"],
    )
    assert code == 0, out


def test_explain_unknown_task(
    bare_registry: Path, tmp_path: Path, signers_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = explain(tmp_path, bare_registry, signers_file, "nope", capsys)
    assert code == 1 and "not on branch main" in out


# ---- merges with content of their own, key lifetimes and retired keys -----------------------


def evil_merge(work: Path, task_id: str, key: SigningKey | None) -> str:
    """Merge a harmless branch with ``git merge --no-commit``, change the task in the merge."""
    git(work, "checkout", "-q", "-b", "harmless")
    (work / "NOTES.md").write_text("notes\n")
    git(work, "add", "NOTES.md")
    git(work, *sign_options(None), "commit", "-q", "-m", "notes")
    git(work, "checkout", "-q", "main")
    git(work, "merge", "-q", "--no-ff", "--no-commit", "harmless")
    task_file = work / "tasks" / task_id / "task.yaml"
    task_file.write_text(task_file.read_text().replace("echo hi", "echo evil"))
    git(work, "add", str(task_file))
    git(work, *sign_options(key), "commit", "-q", "-m", "Merge pull request #7")
    git(work, "push", "-q", "origin", "main")
    return git(work, "rev-parse", "HEAD")


def test_unsigned_merge_with_content_of_its_own_is_refused_naming_it(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    signers_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "r", alice)
    researcher.submit("merged")
    merge = evil_merge(researcher.work, "merged", None)
    code, out = explain(tmp_path, bare_registry, signers_file, "merged", capsys)
    assert code == 1, out
    assert f"merge commit {merge[:12]} ('Merge pull request #7'" in out
    assert "which brings content none of its parents had: no signature" in out


def test_merge_with_content_signed_by_an_untrusted_key_is_refused(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    mallory: SigningKey,
    signers_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "r", alice)
    researcher.submit("merged")
    merge = evil_merge(researcher.work, "merged", mallory)
    code, out = explain(tmp_path, bare_registry, signers_file, "merged", capsys)
    assert code == 1, out
    assert f"merge commit {merge[:12]}" in out
    assert "signed by 'mallory@evil.example', who is not a trusted submitter" in out
    assert "submitted by alice@uni.example" in out


def test_backdated_commit_with_an_expired_key_is_refused(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    retired = tmp_path / "retired_signers"
    retired.write_text(
        f'{alice.principal} namespaces="git",valid-before="20250101Z" {alice.public_line}\n'
    )
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2024-06-01T12:00:00Z")
    monkeypatch.setenv("GIT_AUTHOR_DATE", "2024-06-01T12:00:00Z")
    Researcher(bare_registry, tmp_path / "r", alice).submit("backdated")
    code, out = explain(tmp_path, bare_registry, retired, "backdated", capsys)
    assert code == 1, out
    assert "expired before" in out and "(valid-before)" in out


def test_a_retired_key_stops_working_for_tasks_not_yet_acted_on(
    bare_registry: Path,
    tmp_path: Path,
    alice: SigningKey,
    mallory: SigningKey,
    signers_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    Researcher(bare_registry, tmp_path / "r", alice).submit("pending")
    code, out = explain(tmp_path, bare_registry, signers_file, "pending", capsys)
    assert code == 0, out
    write_allowed_signers(signers_file, mallory)  # the site takes alice's line out
    code, out = explain(tmp_path, bare_registry, signers_file, "pending", capsys)
    assert code == 1 and "not in the allowed signers file" in out
