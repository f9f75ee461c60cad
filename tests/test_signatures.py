"""ptm.signatures over real repositories: ssh-keygen keys, signed commits, real merges made with
``git merge``, evil merges, backdated commits and key lifetimes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ptm.gitrepo import GitRepo, SignatureCheck
from ptm.history import history
from ptm.signatures import (
    cancel_signer_ok,
    commit_label,
    parse_commit,
    parse_path_log,
    task_commits,
    verify_cancel,
    verify_commits,
    verify_task,
    verify_time,
)
from tests.fixtures_git import SigningKey, make_signing_key, sign_options, write_allowed_signers

NOW = datetime.now(timezone.utc)


class Work:
    """A working repository whose commits are signed (or not) with test keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.name", "Someone")
        self.git("config", "user.email", "someone@uni.example")

    def git(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            ["git", *args],
            cwd=self.path,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **(env or {})},
        )
        return done.stdout.strip()

    def write(self, path: str, text: str) -> None:
        target = self.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        self.git("add", path)

    def commit(
        self, message: str, key: SigningKey | None = None, *, date: str | None = None
    ) -> str:
        env = {"GIT_COMMITTER_DATE": date, "GIT_AUTHOR_DATE": date} if date else {}
        self.git(*sign_options(key), "commit", "-q", "--allow-empty", "-m", message, env=env)
        return self.git("rev-parse", "HEAD")

    def change(self, path: str, text: str, message: str, key: SigningKey | None = None) -> str:
        self.write(path, text)
        return self.commit(message, key)

    @property
    def repo(self) -> GitRepo:
        return GitRepo(self.path)


@pytest.fixture
def work(tmp_path: Path) -> Work:
    return Work(tmp_path / "work")


@pytest.fixture
def signers(tmp_path: Path, alice: SigningKey, mallory: SigningKey) -> Path:
    return write_allowed_signers(tmp_path / "allowed_signers", alice, mallory)


def statuses(checks: Sequence[SignatureCheck]) -> list[str]:
    return [c.status for c in checks]


# ---- pure parsing --------------------------------------------------------------------------


def test_payload_is_the_object_without_any_gpgsig_header() -> None:
    data = (
        b"tree 1\nparent 2\nauthor A <a@x> 1 +0000\ncommitter C <c@x> 1700000000 +0000\n"
        b"gpgsig -----BEGIN SSH SIGNATURE-----\n abc\n -----END SSH SIGNATURE-----\n"
        b"gpgsig-sha256 other\n continued\nencoding UTF-8\n\n"
        b"Subject line\nwraps\n\ngpgsig in the body stays\n"
    )
    raw = parse_commit("c" * 40, data)
    assert raw.payload == (
        b"tree 1\nparent 2\nauthor A <a@x> 1 +0000\ncommitter C <c@x> 1700000000 +0000\n"
        b"encoding UTF-8\n\nSubject line\nwraps\n\ngpgsig in the body stays\n"
    )
    assert raw.signature == b"-----BEGIN SSH SIGNATURE-----\nabc\n-----END SSH SIGNATURE-----\n"
    assert (raw.author, raw.subject) == ("a@x", "Subject line wraps")
    assert raw.committed_at == datetime.fromtimestamp(1700000000, timezone.utc)


def test_unsigned_object_and_nonsense_dates() -> None:
    raw = parse_commit("d" * 40, b"tree 1\ncommitter C <c@x> 99999999999999999999 +0000\n\nhi\n")
    assert raw.signature is None and raw.committed_at.year == 1970


def test_merge_listed_once_per_parent_is_an_evil_merge() -> None:
    log = (
        "\x1eM1 p1 p2\n\ntasks/t/a\n\x1eM1 p1 p2\n\ntasks/t/b\n"  # differs from both parents
        "\x1eM2 p1 p3\n\ntasks/t/c\n"  # only brings in one side
        '\x1eC1 p0\n\n"tasks/t/\\036x"\n'
    )
    listed = parse_path_log(log)
    assert [(c.commit, c.merge) for c in listed] == [("M1", True), ("C1", False)]


def test_verify_time_is_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert verify_time(datetime(2026, 12, 1, 10, 0, 0, tzinfo=plus_two)) == "20261201080000Z"
    assert verify_time(datetime(2026, 12, 1, 10, 0, 0)) == "20261201100000Z"


# ---- which commits count for a task ----------------------------------------------------------


def test_task_commits_include_evil_merges_only(work: Work, alice: SigningKey) -> None:
    added = work.change("tasks/t1/task.yaml", "image: a\n", "add t1", alice)
    work.git("checkout", "-q", "-b", "side")
    side = work.change("tasks/t1/files/x.txt", "x\n", "side edit", alice)
    work.git("checkout", "-q", "main")
    work.change("other.txt", "o\n", "unrelated", alice)
    work.git("merge", "-q", "--no-ff", "--no-gpg-sign", "-m", "plain merge", "side")
    plain = work.git("rev-parse", "HEAD")
    work.git("checkout", "-q", "-b", "side2")
    work.change("other.txt", "p\n", "unrelated 2", alice)
    work.git("checkout", "-q", "main")
    work.git("merge", "-q", "--no-ff", "--no-commit", "side2")
    work.write("tasks/t1/task.yaml", "image: evil\n")
    evil = work.commit("merge side2")
    listed = task_commits(work.repo, evil, "t1")
    assert [(c.commit, c.merge) for c in listed] == [(evil, True), (side, False), (added, False)]
    assert plain not in {c.commit for c in listed}
    assert task_commits(work.repo, evil, "nope") == ()


def test_a_merge_combining_two_sides_of_one_task_counts_as_the_mergers(
    work: Work, alice: SigningKey
) -> None:
    work.change("tasks/t1/task.yaml", "image: a\n", "add t1", alice)
    work.git("checkout", "-q", "-b", "one")
    work.change("tasks/t1/files/a.txt", "a\n", "a", alice)
    work.git("checkout", "-q", "main")
    work.git("checkout", "-q", "-b", "two")
    work.change("tasks/t1/files/b.txt", "b\n", "b", alice)
    work.git("checkout", "-q", "main")
    work.git("merge", "-q", "--no-ff", "--no-gpg-sign", "-m", "merge one", "one")
    work.git("merge", "-q", "--no-ff", "--no-gpg-sign", "-m", "merge two", "two")
    head = work.git("rev-parse", "HEAD")
    merges = [c for c in task_commits(work.repo, head, "t1") if c.merge]
    assert [c.commit for c in merges] == [head]  # "merge one" only brought in one side


# ---- verification ----------------------------------------------------------------------------


def test_good_unsigned_unknown_and_bad(
    work: Work, tmp_path: Path, alice: SigningKey, signers: Path
) -> None:
    good = work.change("tasks/t1/task.yaml", "a\n", "signed", alice)
    unsigned = work.change("tasks/t1/task.yaml", "b\n", "unsigned")
    stranger = make_signing_key(tmp_path / "keys", "eve@elsewhere.example")
    unknown = work.change("tasks/t1/task.yaml", "c\n", "stranger", stranger)
    forged = forge(work, good, b"signed", b"signed, then altered")
    checks = verify_commits(
        work.repo, [(c, NOW) for c in (good, unsigned, unknown, forged)], signers
    )
    assert statuses(checks) == ["G", "N", "U", "B"]
    assert checks[0].signer == "alice@uni.example" and checks[0].key.startswith("SHA256:")
    assert checks[0].author == work.git("log", "-1", "--format=%ae", good)
    assert checks[0].subject == "signed"
    assert checks[2].key.startswith("SHA256:") and checks[2].signer == ""
    assert "not in the allowed signers file" in checks[2].describe()
    assert "bad signature" in checks[3].describe()


def test_a_commit_that_is_not_utf8_verifies_byte_for_byte(
    work: Work, tmp_path: Path, alice: SigningKey, signers: Path
) -> None:
    work.write("tasks/t1/task.yaml", "a\n")
    message = tmp_path / "message"
    message.write_bytes(b"Caf\xe9 au lait\n")
    work.git(
        *sign_options(alice), "-c", "i18n.commitEncoding=ISO-8859-1", "commit", "-qF", str(message)
    )
    sha = work.git("rev-parse", "HEAD")
    (check,) = verify_task(work.repo, sha, "t1", signers, at=NOW)
    assert check.good and check.subject == "Caf\ufffd au lait"


def forge(work: Work, commit: str, old: bytes, new: bytes) -> str:
    """A commit object with another commit's signature over an altered message."""
    data = subprocess.run(
        ["git", "cat-file", "commit", commit], cwd=work.path, capture_output=True, check=True
    ).stdout
    done = subprocess.run(
        ["git", "hash-object", "-t", "commit", "-w", "--stdin"],
        cwd=work.path,
        input=data.replace(old, new),
        capture_output=True,
        check=True,
    )
    return done.stdout.decode().strip()


def test_backdating_does_not_revive_an_expired_key(
    work: Work, tmp_path: Path, alice: SigningKey
) -> None:
    retired = tmp_path / "retired"
    retired.write_text(
        f'{alice.principal} namespaces="git",valid-before="20250101Z" {alice.public_line}\n'
    )
    backdated = "2024-06-01T12:00:00Z"
    work.write("tasks/t1/task.yaml", "a\n")
    sha = work.commit("old", alice, date=backdated)
    gits_view = work.git(
        "-c", f"gpg.ssh.allowedSignersFile={retired}", "log", "-1", "--format=%G?", sha
    )
    assert gits_view == "G"  # git trusts the committer date the pusher chose
    (check,) = verify_task(work.repo, sha, "t1", retired, at=NOW)
    assert check.status == "Y" and not check.good
    assert "expired before" in check.describe() and "valid-before" in check.describe()
    at_the_time = datetime(2024, 6, 2, tzinfo=timezone.utc)
    assert verify_task(work.repo, sha, "t1", retired, at=at_the_time)[0].good


def test_key_valid_only_from_the_future_is_refused(
    work: Work, tmp_path: Path, alice: SigningKey
) -> None:
    later = tmp_path / "later"
    start = (NOW + timedelta(days=30)).strftime("%Y%m%d")
    later.write_text(
        f'{alice.principal} namespaces="git",valid-after="{start}Z" {alice.public_line}\n'
    )
    future = (NOW + timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    work.write("tasks/t1/task.yaml", "a\n")
    sha = work.commit("from the future", alice, date=future)
    (check,) = verify_task(work.repo, sha, "t1", later, at=NOW)
    assert check.status == "Y" and "valid-after" in check.describe()


def test_a_key_removed_from_allowed_signers_stops_counting(
    work: Work, tmp_path: Path, alice: SigningKey, mallory: SigningKey
) -> None:
    sha = work.change("tasks/t1/task.yaml", "a\n", "add", alice)
    signers = write_allowed_signers(tmp_path / "allowed", alice, mallory)
    assert verify_task(work.repo, sha, "t1", signers, at=NOW)[0].good
    write_allowed_signers(signers, mallory)  # the site retires alice's key
    (check,) = verify_task(work.repo, sha, "t1", signers, at=NOW)
    assert check.status == "U" and not check.good


def test_a_missing_allowed_signers_file_is_a_config_error(work: Work, tmp_path: Path) -> None:
    sha = work.change("tasks/t1/task.yaml", "a\n", "add")
    with pytest.raises(Exception, match="allowed signers file cannot be read"):
        verify_task(work.repo, sha, "t1", tmp_path / "absent", at=NOW)


def test_evil_merge_checks_name_the_merge(
    work: Work, alice: SigningKey, mallory: SigningKey, signers: Path
) -> None:
    work.change("tasks/t1/task.yaml", "a\n", "add", alice)
    work.git("checkout", "-q", "-b", "pr")
    work.change("README", "r\n", "docs", alice)
    work.git("checkout", "-q", "main")
    work.git("merge", "-q", "--no-ff", "--no-commit", "pr")
    work.write("tasks/t1/task.yaml", "evil\n")
    merge = work.commit("Merge pull request #1", mallory)
    checks = verify_task(work.repo, merge, "t1", signers, at=NOW)
    assert [(c.status, c.signer, c.merge) for c in checks] == [
        ("G", "mallory@evil.example", True),
        ("G", "alice@uni.example", False),
    ]
    assert commit_label(checks[0]).startswith(f"merge commit {merge[:12]}")
    assert "brings content none of its parents had" in commit_label(checks[0])
    assert "merge" not in commit_label(checks[1])


# ---- cancels -------------------------------------------------------------------------------


def check(status: str = "G", signer: str = "alice@uni.example") -> SignatureCheck:
    return SignatureCheck("c" * 40, status, signer, "SHA256:x", "a@x", "Cancel t1")


def test_cancel_signer_rules() -> None:
    assert cancel_signer_ok([check()], "alice@uni.example", ()) is None
    assert cancel_signer_ok([check(signer="ops@site")], "alice@uni.example", ["ops@site"]) is None
    stranger = cancel_signer_ok([check(signer="mallory@evil")], "alice@uni.example", ())
    assert stranger is not None and "'mallory@evil'" in stranger
    assert "policy.trusted_cancellers" in stranger
    unsigned = cancel_signer_ok([check("N", "")], "alice@uni.example", ())
    assert unsigned is not None and "no signature" in unsigned
    assert cancel_signer_ok([], "alice@uni.example", ()) is not None
    assert cancel_signer_ok([check()], None, ()) is not None  # no verified submitter


def test_verify_cancel_reads_the_commits_behind_the_current_cancel(
    work: Work, alice: SigningKey, mallory: SigningKey, signers: Path
) -> None:
    work.change("tasks/t1/task.yaml", "a\n", "add", alice)
    work.change("tasks/t1/cancel.yaml", "reason: x\n", "mallory cancels", mallory)
    work.git("rm", "-q", "tasks/t1/cancel.yaml")
    work.commit("undo", alice)
    head = work.change("tasks/t1/cancel.yaml", "reason: y\n", "alice cancels", alice)
    checks = verify_cancel(work.repo, head, "t1", signers, at=NOW)
    assert [c.signer for c in checks] == ["alice@uni.example"]
    assert cancel_signer_ok(checks, "alice@uni.example", ()) is None
    mine = work.change("tasks/t1/cancel.yaml", "reason: z\n", "mallory edits", mallory)
    checks = verify_cancel(work.repo, mine, "t1", signers, at=NOW)
    reason = cancel_signer_ok(checks, "alice@uni.example", ())
    assert reason is not None and "mallory edits" in reason
    assert verify_cancel(work.repo, head, "t2", signers, at=NOW) == ()


def test_the_users_git_log_settings_change_nothing(
    work: Work, alice: SigningKey, signers: Path
) -> None:
    with open(os.environ["GIT_CONFIG_GLOBAL"], "a") as config:
        config.write("[log]\n\tshowSignature = true\n\tshowRoot = false\n[color]\n\tui = always\n")
    work.git("config", "gpg.ssh.allowedSignersFile", str(signers))
    added = work.change("tasks/t1/task.yaml", "a\n", "add", alice)
    (listed,) = task_commits(work.repo, added, "t1")
    assert listed.commit == added
    (logged,) = history(work.repo, added, "tasks/")
    assert logged.paths == ("tasks/t1/task.yaml",) or logged.paths == ()
    assert (logged.commit, logged.author) == (added, "researcher@test.example")


def test_a_merge_that_adds_the_task_is_its_submission(
    work: Work, alice: SigningKey, mallory: SigningKey, signers: Path
) -> None:
    work.change("README", "r\n", "start", alice)
    work.git("checkout", "-q", "-b", "side")
    work.change("NOTES", "n\n", "notes", alice)
    work.git("checkout", "-q", "main")
    work.git("merge", "-q", "--no-ff", "--no-commit", "side")
    work.write("tasks/t1/task.yaml", "a\n")
    merge = work.commit("Merge side", mallory)
    (check,) = verify_task(work.repo, merge, "t1", signers, at=NOW)
    assert (check.commit, check.merge, check.signer) == (merge, True, "mallory@evil.example")
