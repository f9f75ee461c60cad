"""ptm agent check against real servers: gitolite3 with per-branch rules behind OpenSSH, the
SFTP service, real keys. Every check runs; --json also when checks fail; nothing changes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from ptm.main import main
from ptm.push_access import is_permission_denied, probe_push_access
from ptm.registry import ssh_environment
from ptm.site_checks import check_signing_key, parse_allowed_signers
from tests.fixtures_git import make_signing_key
from tests.ssh_servers import GitoliteHost, make_ssh_key, running_gitolite, ssh_command
from tests.test_delivery import Ttp, start_ttp

SITES = ["admin", "hospital-a", "hospital-b", "hospital-c"]
RULES = """
repo gitolite-admin
    RW+                      = admin
repo registry
    RW+                      = admin
    RW  results/hospital-a$  = hospital-a
    RW  results/hospital-b$  = hospital-b
    R                        = hospital-a hospital-b hospital-c
"""


@pytest.fixture(scope="module")
def gitolite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitoliteHost]:
    folder = tmp_path_factory.mktemp("gitolite")
    with running_gitolite(folder, SITES, RULES) as host:
        known_hosts = host.ssh.known_hosts(folder / "admin_known_hosts")
        env = {
            **os.environ,
            "GIT_SSH_COMMAND": ssh_command(host.keys["admin"].private, known_hosts),
        }
        work = folder / "seed"
        subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
        subprocess.run(
            ["git", "-C", str(work), "commit", "-q", "--allow-empty", "-m", "registry"],
            check=True,
            env={**env, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "a"}
            | {"GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@x"},
        )
        for branch in ("main", "results/hospital-a", "results/hospital-b"):
            subprocess.run(
                ["git", "-C", str(work), "push", "-q", host.url("registry"), f"HEAD:{branch}"],
                check=True,
                env=env,
            )
        yield host


def refs_and_logs(host: GitoliteHost) -> tuple[str, list[str]]:
    bare = host.bare("registry")
    refs = subprocess.run(
        ["git", "-C", str(bare), "for-each-ref"], capture_output=True, text=True, check=True
    ).stdout
    logs = sorted(str(p.relative_to(bare)) for p in (bare / "logs").rglob("*") if p.is_file())
    return refs, logs


def site_config(folder: Path, host: GitoliteHost, site: str, key_of: str, **extra: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "ptm": 1,
        "site": site,
        "registry": {
            "url": host.url("registry"),
            "ssh_key": str(host.keys[key_of].private),
            "known_hosts": str(host.ssh.known_hosts(folder / "known_hosts")),
        },
        "workdir": str(folder / "work"),
        "policy": {"allowed_images": ["x/.*"], "require_signed_tasks": False},
        **extra,
    }
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def check_json(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["agent", "check", "--config", str(config), "--json"])
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return code, document


def by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in document["checks"]}


def test_a_site_may_write_its_own_results_branch_and_nothing_changes(
    gitolite: GitoliteHost,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    docker_client: object,
) -> None:
    before = refs_and_logs(gitolite)
    config = site_config(tmp_path, gitolite, "hospital-a", key_of="hospital-a")
    code, document = check_json(config, capsys)
    checks = by_name(document)
    assert code == 0, document
    assert document["ok"] is True
    assert (
        checks["push"]["ok"]
        and "accepts updates of refs/heads/results/hospital-a" in (checks["push"]["detail"])
    )
    assert checks["registry"]["ok"] and "branch main at" in checks["registry"]["detail"]
    assert refs_and_logs(gitolite) == before  # no ref moved, no reflog written


def test_a_host_that_denies_the_push_fails_the_check_where_dry_run_passes(
    gitolite: GitoliteHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # hospital-a's key, but the config says hospital-b: gitolite allows only results/hospital-a.
    config = site_config(tmp_path, gitolite, "hospital-b", key_of="hospital-a")
    code, document = check_json(config, capsys)
    push = by_name(document)["push"]
    assert code == 1 and document["ok"] is False
    assert not push["ok"] and "DENIED" in push["detail"] and "hook declined" in push["detail"]
    assert by_name(document)["registry"]["ok"]  # every check ran, not only up to the failure
    assert {"signing_key", "allowed_signers", "docker", "workdir"} <= set(by_name(document))
    # Why ptm does not use git push --dry-run: it passes for the very same push.
    env = {
        **os.environ,
        **ssh_environment(gitolite.keys["hospital-a"].private, tmp_path / "known_hosts"),
    }
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", gitolite.url("registry"), str(clone)], env=env, check=True
    )
    dry = subprocess.run(
        [
            "git",
            "-C",
            str(clone),
            "push",
            "--dry-run",
            "origin",
            "HEAD:refs/heads/results/hospital-b",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0, dry.stderr


def test_a_site_without_any_write_access_fails_with_the_hosts_words(
    gitolite: GitoliteHost, tmp_path: Path
) -> None:
    env = ssh_environment(gitolite.keys["hospital-c"].private, tmp_path / "known_hosts")
    gitolite.ssh.known_hosts(tmp_path / "known_hosts")
    with pytest.raises(Exception, match="W any registry hospital-c DENIED") as caught:
        probe_push_access(gitolite.url("registry"), "hospital-c", env)
    assert is_permission_denied(str(caught.value))


def test_a_wrong_pinned_host_key_fails_registry_and_push(
    gitolite: GitoliteHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = site_config(tmp_path, gitolite, "hospital-a", key_of="hospital-a")
    other = make_ssh_key(tmp_path / "other", "other_host")
    (tmp_path / "known_hosts").write_text(
        f"[127.0.0.1]:{gitolite.ssh.port} {' '.join(other.public_line.split()[:2])}\n"
    )
    code, document = check_json(config, capsys)
    checks = by_name(document)
    assert code == 1
    assert (
        not checks["registry"]["ok"]
        and "Host key verification failed" in (checks["registry"]["detail"])
    )
    assert not checks["push"]["ok"]


def test_key_and_known_hosts_paths_with_spaces_and_percent_work(
    gitolite: GitoliteHost, tmp_path: Path
) -> None:
    odd = tmp_path / "a folder %d"
    odd.mkdir()
    key = odd / "deploy key"
    key.write_bytes(gitolite.keys["hospital-a"].private.read_bytes())
    key.chmod(0o600)
    known_hosts = gitolite.ssh.known_hosts(odd / "known hosts")
    probe = probe_push_access(
        gitolite.url("registry"), "hospital-a", ssh_environment(key, known_hosts)
    )
    assert probe.accepted is True


def test_a_missing_branch_is_reported_not_guessed(gitolite: GitoliteHost, tmp_path: Path) -> None:
    gitolite.ssh.known_hosts(tmp_path / "known_hosts")
    env = ssh_environment(gitolite.keys["admin"].private, tmp_path / "known_hosts")
    probe = probe_push_access(gitolite.url("registry"), "hospital-new", env)
    assert probe.accepted is None and "does not exist yet" in probe.detail


def test_local_registry_push_check_runs_the_hosts_update_hook(tmp_path: Path) -> None:
    bare = tmp_path / "registry.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run(["git", "-C", str(work), "commit", "-q", "--allow-empty", "-m", "a"], check=True)
    subprocess.run(["git", "-C", str(work), "push", "-q", str(bare), "HEAD:results/a"], check=True)
    hook = bare / "hooks" / "update"
    hook.write_text('#!/bin/sh\necho "protected branch $1" >&2\nexit 1\n')
    hook.chmod(0o755)
    probe = probe_push_access(str(bare), "a", {})
    assert probe.accepted is False and "protected branch refs/heads/results/a" in probe.detail
    hook.unlink()
    assert probe_push_access(str(bare), "a", {}).accepted is True


@pytest.mark.parametrize(
    "message",
    [
        "FATAL: W refs/heads/results/b registry hospital-a DENIED by fallthru",
        "remote: Permission to org/registry.git denied to site-bot.",
        "remote: GitLab: You are not allowed to push code to protected branches on this project.",
        "git@host: Permission denied (publickey).",
        "fatal: unable to access 'https://h/r/': The requested URL returned error: 403",
        " ! [remote rejected] HEAD -> results/a (pre-receive hook declined)",
    ],
)
def test_permission_refusals_are_recognised(message: str) -> None:
    assert is_permission_denied(message)


@pytest.mark.parametrize(
    "message",
    [
        "ssh: connect to host h port 22: Connection refused",
        "fatal: unable to access 'https://h/r/': Could not resolve host: h",
        " ! [rejected] HEAD -> results/a (fetch first)",
        "fatal: the remote end hung up unexpectedly",
    ],
)
def test_transient_failures_are_not_permission_refusals(message: str) -> None:
    assert not is_permission_denied(message)


def test_allowed_signers_parse_and_name_every_problem(tmp_path: Path) -> None:
    alice = make_signing_key(tmp_path, "alice@uni.example")
    bob = make_signing_key(tmp_path, "bob@uni.example")
    text = (
        "# researchers\n"
        f"{alice.allowed_signers_line()}\n"
        f'"bob@uni.example,carol@uni.example" {bob.public_line}\n'
        "dave@uni.example ssh-ed25519 not-base64!\n"
        f"erin@uni.example ssh-rsa {alice.public_line.split()[1]}\n"
        "frank@uni.example\n"
    )
    principals, problems = parse_allowed_signers(text)
    assert principals == {"alice@uni.example", "bob@uni.example", "carol@uni.example"}
    assert problems == [
        "line 4: the key is not valid base64",
        "line 5: the key is a ssh-ed25519 key, not ssh-rsa",
        "line 6: expected 'principals [options] key-type base64-key'",
    ]


def test_signing_key_check_signs_for_real(tmp_path: Path) -> None:
    good = make_signing_key(tmp_path / "good", "site@hospital-a")
    assert check_signing_key(good.private).endswith("signs")
    locked = tmp_path / "locked"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "passphrase", "-f", str(locked)], check=True
    )
    with pytest.raises(Exception, match="cannot sign with this key"):
        check_signing_key(locked)
    with pytest.raises(Exception, match="signing key not found"):
        check_signing_key(tmp_path / "missing")


@pytest.fixture
def ttp(tmp_path: Path) -> Iterator[Ttp]:
    yield from start_ttp(tmp_path / "ttp")


def test_sftp_targets_are_each_checked_with_their_host_key(
    ttp: Ttp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = replace(ttp.target, host_key=make_ssh_key(tmp_path / "k", "wrong").public_line)
    targets = {
        "good": {**_target_document(ttp.target)},
        "impostor": {**_target_document(wrong)},
    }
    config = tmp_path / "site.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ptm": 1,
                "site": "hospital-a",
                "registry": {"url": str(tmp_path / "nowhere.git")},
                "workdir": str(tmp_path / "work"),
                "policy": {"require_signed_tasks": False},
                "sftp_targets": targets,
            }
        )
    )
    code, document = check_json(config, capsys)
    checks = by_name(document)
    assert code == 1
    assert checks["sftp:good"]["ok"] and "matches, logged in" in checks["sftp:good"]["detail"]
    assert not checks["sftp:impostor"]["ok"]
    assert "is not the host_key configured" in checks["sftp:impostor"]["detail"]
    assert not checks["registry"]["ok"]  # and the rest ran regardless


def _target_document(target: Any) -> dict[str, Any]:
    return {
        "host": target.host,
        "port": target.port,
        "user": target.user,
        "key": str(target.key),
        "host_key": target.host_key,
        "path": target.path,
    }


def test_an_invalid_config_still_gives_json_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "site.yaml"
    config.write_text("ptm: 1\nsite: hospital-a\nregistry: {url: x}\npolicy: {approval: maybe}\n")
    code, document = check_json(config, capsys)
    assert code == 1 and document["ok"] is False
    (only,) = document["checks"]
    assert only["name"] == "config" and "policy.approval" in only["detail"]


def test_credentials_in_the_registry_url_are_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "site.yaml"
    url = "https://site-a:s3cr3t-token@127.0.0.1:9/registry.git"
    config.write_text(
        yaml.safe_dump(
            {
                "ptm": 1,
                "site": "hospital-a",
                "registry": {"url": url},
                "workdir": str(tmp_path / "work"),
                "policy": {"require_signed_tasks": False},
            }
        )
    )
    assert main(["agent", "check", "--config", str(config), "--json"]) == 1
    printed = capsys.readouterr()
    assert "s3cr3t-token" not in printed.out + printed.err
    assert "https://site-a:***@127.0.0.1:9/registry.git" in printed.out
    assert main(["agent", "check", "--config", str(config)]) == 1
    printed = capsys.readouterr()
    assert "s3cr3t-token" not in printed.out + printed.err
