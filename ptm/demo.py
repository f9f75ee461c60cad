"""``ptm demo``: a whole federation on this machine.

A bare registry in a temporary folder, three hospitals with their own synthetic patients, site
configs that trust one researcher's key and sign their results, three agents watching the
registry, and the federated-mean example submitted as a signed commit. The example code (the
site image and the central script) ships with ptm as ``ptm.examples``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ptm import logs
from ptm.agent import Agent
from ptm.api import Registry
from ptm.errors import PtmError, RuntimeUnavailable
from ptm.examples import images, synthetic
from ptm.examples.central import Federation
from ptm.examples.federated_mean import IMAGE, MeanResult, run_federated_mean
from ptm.examples.pooled import pooled_mean
from ptm.gitrepo import GitRepo
from ptm.process import run
from ptm.registry import DEFAULT_BRANCH, commit, init_registry, push_with_rebase
from ptm.registry import clone as clone_registry
from ptm.runtimes import open_runtime
from ptm.siteconfig import load_site_config
from ptm.watch import run_until_stopped

SITES = ("hospital-a", "hospital-b", "hospital-c")
RESEARCHER = "researcher@demo.example"
TASK_ID = "mean-age"
COLUMN = "age"
CONFIG_FILE = "config.yaml"
ENGINE_HINT = (
    "On a Debian machine, ptm's source tree starts a private engine with 'scripts/engine start' "
    "(then export the DOCKER_HOST line it prints), or run 'scripts/demo', which does everything."
)


@dataclass(frozen=True)
class DemoOutcome:
    folder: Path
    registry: Path
    researcher_clone: Path
    result: MeanResult
    pooled_mean: float


def check_engine(docker_host: str | None) -> str:
    try:
        return open_runtime("docker", docker_host=docker_host).ping()
    except RuntimeUnavailable as exc:
        raise PtmError(
            f"ptm demo needs a Docker engine and none is reachable ({exc}). {ENGINE_HINT}"
        ) from exc


def run_demo(folder: Path, *, say: Callable[[str], None], timeout: float = 300) -> DemoOutcome:
    """Build the federation in ``folder`` (new or empty), run the study, stop the agents."""
    say(f"Docker engine: {check_engine(None)}")
    say(f"Building the site image {IMAGE} offline from busybox-static …")
    images.build_example_image("federated-mean", IMAGE, docker_host=None)
    registry = folder / "registry.git"
    researcher_key = _ssh_key(folder / "keys" / "researcher", RESEARCHER)
    init_registry(registry, bare=True, sign_key=researcher_key)
    say(f"Registry: {registry} (a bare git repository; any git host would do)")
    signers = folder / "allowed_signers"
    signers.write_text(f'{RESEARCHER} namespaces="git" {_public(researcher_key)}\n')
    data = synthetic.write_site_data(folder / "data", SITES, seed=7)
    configs = [_site_config(folder, site, registry, signers, data[site].parent) for site in SITES]
    say("Sites: " + ", ".join(f"{s} ({_rows(data[s])} patients)" for s in SITES))
    clone = folder / "researcher"
    _researcher_clone(registry, clone, researcher_key)
    _list_sites(clone, folder / "keys", researcher_key)
    with _agents(configs):
        say(f"Agents started. Submitting task {TASK_ID!r} as {RESEARCHER} (signed) …")
        federation = Federation(
            Registry.open(clone),
            sites=SITES,
            sign_key=researcher_key,
            timeout=timeout,
            poll_interval=1.0,
        )
        result = run_federated_mean(federation, column=COLUMN, task_id=TASK_ID)
    pooled = pooled_mean([data[s] for s in SITES], COLUMN)
    return DemoOutcome(folder, registry, clone, result, pooled)


def _researcher_clone(registry: Path, clone: Path, key: Path) -> None:
    """The researcher's clone, set up as the README's walk-through expects: it signs commits
    with the researcher's key and holds the task's config.yaml (kept out of git status)."""
    repo = clone_registry(str(registry), clone, branch=DEFAULT_BRANCH)
    settings = {
        "user.name": "Demo Researcher",
        "user.email": RESEARCHER,
        "gpg.format": "ssh",
        "user.signingkey": str(key),
        "commit.gpgsign": "true",
        "gpg.ssh.allowedSignersFile": str(clone.parent / "allowed_signers"),
    }
    for name, value in settings.items():
        repo.run("config", name, value)
    (clone / CONFIG_FILE).write_text(f"column: {COLUMN}\n", encoding="utf-8")
    with (clone / ".git" / "info" / "exclude").open("a", encoding="utf-8") as exclude:
        exclude.write(f"/{CONFIG_FILE}\n/results/\n")


def _list_sites(clone: Path, keys: Path, researcher_key: Path) -> None:
    """sites/<site>.yaml for each hospital, with the key that signs its results."""
    for site in SITES:
        document = {
            "ptm": 1,
            "name": site,
            "contact": f"research-it@{site}.example",
            "principal": f"ptm-agent@{site}",
            "public_key": _public(keys / site),
        }
        (clone / "sites" / f"{site}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    repo = GitRepo(clone)
    commit(repo, ["sites"], "List the demo's three sites", sign_key=researcher_key)
    push_with_rebase(repo, DEFAULT_BRANCH, sign_key=researcher_key)


@contextmanager
def _agents(configs: list[Path]) -> Iterator[None]:
    stop = threading.Event()
    threads = []
    for config in configs:
        agent = Agent(load_site_config(config), open_runtime("docker"))
        thread = threading.Thread(
            target=run_until_stopped, args=(agent, stop), name=f"demo-{config.stem}", daemon=True
        )
        thread.start()
        threads.append(thread)
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def _site_config(folder: Path, site: str, registry: Path, signers: Path, data: Path) -> Path:
    key = _ssh_key(folder / "keys" / site, f"ptm-agent@{site}")
    document: dict[str, Any] = {
        "ptm": 1,
        "site": site,
        "registry": {"url": str(registry), "branch": "main"},
        "workdir": str(folder / "sites" / site),
        "poll_interval": 2,
        "policy": {
            "allowed_images": ["ptm-examples/federated-mean:.*"],
            "require_signed_tasks": True,
            "allowed_signers": str(signers),
            "trusted_submitters": [RESEARCHER],
        },
        "limits": {"timeout": 120, "memory": "256m", "cpus": 1, "max_parallel": 1},
        "runtime": {"pull": "never"},
        "mounts": [{"source": str(data), "target": "/data"}],
        "signing_key": str(key),
    }
    path = folder / "sites" / f"{site}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def _ssh_key(path: Path, comment: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path


def _public(private: Path) -> str:
    kind, key, *_ = private.with_name(private.name + ".pub").read_text().split()
    return f"{kind} {key}"


def _rows(csv: Path) -> int:
    return len(csv.read_text(encoding="utf-8").splitlines()) - 1


def agent_logs(*, verbose: bool) -> None:
    """The demo tells its own story on stdout; the agents' decisions go to stderr."""
    logs.configure(log_format="text", verbose=False)
    if not verbose:
        logging.getLogger("ptm").setLevel(logging.WARNING)
