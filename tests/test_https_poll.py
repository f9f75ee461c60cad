"""A poll of an http(s) registry asks a real smart-HTTP host (lighttpd with git http-backend)
for branches only: its tags and pull-request refs, however many, are not sent."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ptm.gitrepo import GitRepo
from tests.fixtures_git import git
from tests.http_git_server import running_lighttpd


def test_an_http_poll_asks_for_branches_only(tmp_path: Path) -> None:
    with running_lighttpd(tmp_path / "http", {"site": "secret"}) as host:
        bare = host.repositories / "registry.git"
        subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
        tree = git(bare, "hash-object", "-t", "tree", "-w", "/dev/null")
        head = git(bare, "commit-tree", tree, "-m", "tasks")
        refs = [f"update refs/heads/main {head}", f"update refs/heads/results/a {head}"]
        refs += [f"update refs/tags/v{n} {head}" for n in range(300)]
        refs += [f"update refs/pull/{n}/head {head}" for n in range(300)]
        subprocess.run(
            ["git", "update-ref", "--stdin"],
            cwd=bare,
            input="\n".join(refs) + "\n",
            text=True,
            check=True,
        )
        trace = tmp_path / "packets"
        repo = GitRepo(tmp_path, env={"GIT_TRACE_PACKET": str(trace)})
        assert repo.remote_head(host.url("registry", "site", "secret"), "main") == head
    packets = trace.read_text()
    assert "ls-remote> ref-prefix refs/heads/" in packets  # protocol v2, branches asked for
    assert "refs/tags/" not in packets and "refs/pull/" not in packets
    assert "refs/heads/results/a" in packets
