"""The push-access check over smart HTTP: lighttpd + git http-backend with basic auth, and an
update hook that lets each user write only results/<user>."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from ptm.push_access import PushDenied, probe_push_access
from tests.http_git_server import HttpGitHost, running_lighttpd

USERS = {"hospital-a": "pw-a", "hospital-b": "pw-b"}
HOOK = """#!/bin/sh
[ "$1" = "refs/heads/results/$REMOTE_USER" ] && exit 0
echo "$REMOTE_USER may not write $1" >&2
exit 1
"""


@pytest.fixture(scope="module")
def http_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpGitHost]:
    folder = tmp_path_factory.mktemp("http")
    with running_lighttpd(folder, USERS) as host:
        bare = host.repositories / "registry.git"
        subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
        subprocess.run(["git", "-C", str(bare), "config", "http.receivepack", "true"], check=True)
        work = folder / "seed"
        env = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x"}
        env |= {"GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@x", "PATH": "/usr/bin:/bin"}
        subprocess.run(["git", "init", "-q", str(work)], check=True, env=env)
        subprocess.run(
            ["git", "-C", str(work), "commit", "-q", "--allow-empty", "-m", "r"],
            check=True,
            env=env,
        )
        for branch in ("main", "results/hospital-a", "results/hospital-b"):
            subprocess.run(
                ["git", "-C", str(work), "push", "-q", str(bare), f"HEAD:refs/heads/{branch}"],
                check=True,
                env=env,
            )
        hook = bare / "hooks" / "update"
        hook.write_text(HOOK)
        hook.chmod(0o755)
        yield host


def refs(host: HttpGitHost) -> str:
    bare = host.repositories / "registry.git"
    return subprocess.run(
        ["git", "-C", str(bare), "for-each-ref"], capture_output=True, text=True, check=True
    ).stdout


def test_a_site_may_update_its_own_branch_over_http(http_host: HttpGitHost) -> None:
    before = refs(http_host)
    probe = probe_push_access(http_host.url("registry", "hospital-a", "pw-a"), "hospital-a", {})
    assert probe.accepted is True, probe.detail
    assert refs(http_host) == before


def test_another_sites_branch_is_refused_by_the_hook(http_host: HttpGitHost) -> None:
    probe = probe_push_access(http_host.url("registry", "hospital-a", "pw-a"), "hospital-b", {})
    assert probe.accepted is False and "hook declined" in probe.detail


def test_a_wrong_password_is_a_permission_refusal_without_the_password(
    http_host: HttpGitHost,
) -> None:
    with pytest.raises(PushDenied, match="401") as caught:
        probe_push_access(http_host.url("registry", "hospital-a", "wrong-pw"), "hospital-a", {})
    assert "wrong-pw" not in str(caught.value)
