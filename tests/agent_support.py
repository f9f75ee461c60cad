"""Agent test helpers: site configs, tasks pushed to a real bare registry, results read back."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from ptm.agent import Agent
from ptm.registry import DEFAULT_BRANCH
from ptm.runtimes.docker import DockerRuntime
from ptm.siteconfig import SiteConfig, load_site_config
from ptm.submission import TaskDraft, submit_task, write_task
from tests.fixtures_git import SigningKey, clone, git

TEST_IMAGE = "ptm-test/busybox:latest"


def write_site_config(folder: Path, site: str, registry: Path, **overrides: Any) -> Path:
    document: dict[str, Any] = {
        "ptm": 1,
        "site": site,
        "registry": {"url": str(registry), "branch": "main"},
        "workdir": str(folder / f"work-{site}"),
        "poll_interval": 1,
        "policy": {"allowed_images": ["ptm-test/.*:.*"], "require_signed_tasks": False},
        "limits": {"timeout": 120, "max_parallel": 2},
        "runtime": {"pull": "never"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    path = folder / f"{site}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def site_agent(folder: Path, site: str, registry: Path, **overrides: Any) -> Agent:
    config: SiteConfig = load_site_config(write_site_config(folder, site, registry, **overrides))
    agent = Agent(config, DockerRuntime(None))
    agent.start()
    return agent


class Researcher:
    """A researcher's clone of the registry, submitting tasks (signed when given a key)."""

    def __init__(self, registry: Path, folder: Path, key: SigningKey | None = None) -> None:
        self.registry = registry
        self.work = clone(registry, folder)
        self.key = key

    def submit(
        self,
        task_id: str,
        script: str = "echo hi",
        *,
        image: str = TEST_IMAGE,
        sites: tuple[str, ...] = ("hospital-a",),
        **extra: Any,
    ) -> str:
        git(self.work, "pull", "-q", "--rebase")
        draft = TaskDraft(task_id, image, sites, command=("sh", "-c", script), **extra)
        write_task(self.work, draft)
        submitted = submit_task(
            self.work,
            task_id,
            branch=DEFAULT_BRANCH,
            sign_key=self.key.private if self.key else None,
        )
        return submitted.commit

    def commit_file(self, path: str, text: str, message: str) -> None:
        git(self.work, "pull", "-q", "--rebase")
        target = self.work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        git(self.work, "add", path)
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", "HEAD:main")


def remote_status(registry: Path, task_id: str, site: str = "hospital-a") -> dict[str, Any] | None:
    ref = f"results/{site}:results/{task_id}/{site}/status.yaml"
    done = subprocess.run(["git", "show", ref], cwd=registry, capture_output=True, text=True)
    if done.returncode != 0:
        return None
    loaded: dict[str, Any] = yaml.safe_load(done.stdout)
    return loaded


def remote_file(registry: Path, task_id: str, name: str, site: str = "hospital-a") -> str:
    return git(registry, "show", f"results/{site}:results/{task_id}/{site}/{name}")


def states_in_history(registry: Path, task_id: str, site: str = "hospital-a") -> list[str]:
    """Each state this site recorded for the task, oldest first (from the commit trailers)."""
    out = git(
        registry,
        "log",
        "--reverse",
        "--format=%(trailers:key=State,valueonly)",
        f"results/{site}",
        "--",
        f"results/{task_id}/{site}/status.yaml",
    )
    return [line.strip() for line in out.splitlines() if line.strip()]
