"""The base install, without extras, is what researchers, auditors, registry CI and the
pre-commit hook use: with docker, watchdog, paramiko and pyrage unimportable (a sitecustomize
on PYTHONPATH refuses them, as if they were not installed), ``ptm validate --staged``, ``ptm
task``, ``status``, ``results``, ``cancel``, ``audit`` and ``policy explain`` work on real
registries, and the commands that need an extra say which one in one line."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ptm.commands import EXTRA_OF_LIBRARY
from ptm.registry import init_registry
from ptm.schema import dump_yaml
from ptm.status import StatusRecord
from tests.fixtures_git import SigningKey, clone, git, make_signing_key, write_allowed_signers
from tests.test_status_cmd import SiteBranch, final_result

REPO = Path(__file__).resolve().parents[1]
BLOCKED = tuple(sorted(EXTRA_OF_LIBRARY))
SITECUSTOMIZE = """
import sys

BLOCKED = {blocked!r}


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
"""


def env_without(folder: Path, blocked: tuple[str, ...]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=blocked))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)])}


@pytest.fixture(scope="module")
def light_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return env_without(tmp_path_factory.mktemp("light"), BLOCKED)


def light(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ptm", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


@pytest.fixture
def researcher(tmp_path: Path) -> tuple[Path, Path, SigningKey]:
    """A bare registry (as 'ptm registry init' makes it, with two sites), a clone, a key."""
    bare = tmp_path / "registry.git"
    init_registry(bare, bare=True)
    work = clone(bare, tmp_path / "clone")
    for site in ("hospital-a", "hospital-b"):
        (work / "sites" / f"{site}.yaml").write_text(f"ptm: 1\nname: {site}\n")
    git(work, "add", "sites")
    git(work, "-c", "commit.gpgSign=false", "commit", "-qm", "sites")
    git(work, "push", "-q", "origin", "HEAD")
    return bare, work, make_signing_key(tmp_path / "keys", "alice@uni.example")


@pytest.mark.parametrize("library", BLOCKED)
def test_the_libraries_of_the_extras_are_unimportable_there(
    light_env: dict[str, str], library: str
) -> None:
    code = f"import {library}"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    blocked = subprocess.run([sys.executable, "-c", code], env=light_env, check=False)
    assert blocked.returncode == 1


def hook_command() -> list[str]:
    """The entry of ptm's own pre-commit hook (the one pre-commit installs ptm's base for)."""
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    (hook,) = hooks
    return shlex.split(hook["entry"])[1:]  # 'ptm' is this interpreter's 'python -m ptm'


def test_the_pre_commit_hook_checks_staged_tasks_without_the_extras(
    light_env: dict[str, str], researcher: tuple[Path, Path, SigningKey]
) -> None:
    _, work, _ = researcher
    ok(light(light_env, work, "task", "new", "good", "--image", "x/y:1", "--site", "hospital-a"))
    git(work, "add", "tasks/good")
    draft = work / "tasks" / "draft" / "task.yaml"  # untracked: not the hook's business
    draft.parent.mkdir(parents=True)
    draft.write_text("ptm: 1\nimage: [broken\n")
    staged = ["tasks/good/task.yaml"]
    assert "valid" in ok(light(light_env, work, *hook_command(), *staged)).lower()

    ok(light(light_env, work, "task", "new", "typo", "--image", "x/y:1", "--site", "hosptial-b"))
    git(work, "add", "tasks/typo")
    done = light(light_env, work, *hook_command(), *staged, "tasks/typo/task.yaml")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "tasks/typo/task.yaml: sites[0]: 'hosptial-b'" in done.stdout + done.stderr
    assert "did you mean 'hospital-b'" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "draft" not in done.stdout + done.stderr


def sealed_result(task: str, site: str) -> dict[str, bytes]:
    """A site's encrypted result as the ledger publishes it: metadata and result.age."""
    sealed = b"age-encryption.org/v1\n-> stand-in\n"
    digest = hashlib.sha256(sealed).hexdigest()
    record = StatusRecord(
        task=task,
        site=site,
        state="completed",
        task_commit="3f2c" * 10,
        received_at="2026-12-01T10:00:00Z",
        finished_at="2026-12-01T10:00:09Z",
        exit_code=0,
        encrypted_to=("SHA256:" + "A" * 43,),
        outputs=({"path": "result.age", "bytes": len(sealed), "sha256": digest},),
    )
    folder = f"results/{task}/{site}"
    return {
        f"{folder}/status.yaml": dump_yaml(record.to_document()).encode(),
        f"{folder}/result.age": sealed,
    }


def site_config(tmp_path: Path, bare: Path, signers: Path) -> Path:
    document: dict[str, Any] = {
        "ptm": 1,
        "site": "hospital-a",
        "registry": {"url": str(bare), "branch": "main"},
        "workdir": str(tmp_path / "work-a"),
        "policy": {
            "allowed_images": ["x/.*:.*"],
            "require_signed_tasks": True,
            "allowed_signers": str(signers),
            "trusted_submitters": ["alice@uni.example"],
        },
    }
    path = tmp_path / "hospital-a.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_researchers_and_auditors_commands_work_without_the_extras(
    light_env: dict[str, str], researcher: tuple[Path, Path, SigningKey], tmp_path: Path
) -> None:
    bare, work, alice = researcher
    new = ("task", "new", "t1", "--image", "x/y:1", "--site", "hospital-a", "--site", "hospital-b")
    ok(light(light_env, work, *new))
    ok(light(light_env, work, "task", "submit", "t1", "--sign-key", str(alice.private)))
    assert "gpgsig -----BEGIN SSH SIGNATURE-----" in git(bare, "cat-file", "commit", "main")
    SiteBranch(bare, "hospital-a").put(final_result("t1", "hospital-a"))

    rows = json.loads(ok(light(light_env, work, "status", "t1", "--json")))
    assert json.dumps(rows).count("completed") >= 1

    out = tmp_path / "out"
    ok(light(light_env, work, "results", "t1", "--out", str(out)))
    assert (out / "hospital-a" / "output" / "summary.csv").read_text() == "site,mean\nx,42\n"

    signers = write_allowed_signers(tmp_path / "allowed_signers", alice)
    config = site_config(tmp_path, bare, signers)
    explained = ok(light(light_env, work, "policy", "explain", "t1", "--config", str(config)))
    assert "would run task t1" in explained

    # the hand-made result names a commit the tasks branch lacks: a finding, so exit 1
    audit = light(light_env, work, "audit", "--allowed-signers", str(signers))
    assert (audit.returncode, audit.stderr) == (1, "")
    assert "alice@uni.example" in audit.stdout and "[unknown-task-commit]" in audit.stdout

    cancel = ("cancel", "t1", "--reason", "done", "--sign-key", str(alice.private))
    ok(light(light_env, work, *cancel))
    git(work, "pull", "-q")
    assert (work / "tasks" / "t1" / "cancel.yaml").is_file()


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    return line


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("agent", "run", "--config", "site.yaml"), "agent"),
        (("agent", "once", "--config", "site.yaml"), "agent"),
        (("agent", "check", "--config", "site.yaml"), "agent"),
        (("demo",), "agent"),
        (("sftp", "serve", "--config", "sftp.yaml"), "sftp"),
    ],
    ids=" ".join,
)
def test_a_command_needing_an_extra_names_it_in_one_line(
    light_env: dict[str, str], tmp_path: Path, args: tuple[str, ...], extra: str
) -> None:
    line = one_line_error(light(light_env, tmp_path, *args))
    command = " ".join(a for a in args[:2] if not a.startswith("-"))
    assert line == (
        f"ptm: error: ptm {command} needs the {extra} extra: "
        f"pip install 'ptm-health-train[{extra}]'"
    )


def test_decrypting_results_names_the_age_extra(
    light_env: dict[str, str], researcher: tuple[Path, Path, SigningKey], tmp_path: Path
) -> None:
    bare, work, alice = researcher
    ok(light(light_env, work, "task", "new", "t2", "--image", "x/y:1", "--site", "hospital-a"))
    ok(light(light_env, work, "task", "submit", "t2", "--sign-key", str(alice.private)))
    SiteBranch(bare, "hospital-a").put(sealed_result("t2", "hospital-a"))
    args = ("results", "t2", "--out", str(tmp_path / "out"), "--identity", str(alice.private))
    line = one_line_error(light(light_env, work, *args))
    assert line == (
        "ptm: error: ptm results needs the age extra: pip install 'ptm-health-train[age]'"
    )


def test_a_missing_base_library_is_a_broken_install_not_an_extra(tmp_path: Path) -> None:
    """Only the extras' libraries get the one-line hint; a missing base library is a bug (3)."""
    broken = {**env_without(tmp_path / "broken", ("jsonschema",)), "TMPDIR": str(tmp_path)}
    done = light(broken, REPO, "validate", "registry-template")
    assert done.returncode == 3, done.stderr
    assert "an unexpected error occurred" in done.stderr and "extra" not in done.stderr
    (log,) = tmp_path.glob("ptm-crash-*.log")
    assert "No module named 'jsonschema'" in log.read_text()
