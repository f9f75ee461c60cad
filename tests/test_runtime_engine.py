"""``runtime.engine`` in a site config: each engine's settings, validated, and the agent (its
``check`` and a whole cycle) on the engine the config chooses."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptm.errors import ConfigError
from ptm.main import main
from ptm.siteconfig import PodmanSettings, SlurmSettings, load_site_config
from tests.agent_support import Researcher, remote_file, remote_status, write_site_config
from tests.fixtures_podman import PodmanEngine

BASE = (
    "site: hospital-a\nregistry: {url: /srv/registry.git}\npolicy: {require_signed_tasks: false}\n"
)


def config_with(tmp_path: Path, runtime: str) -> Path:
    path = tmp_path / "etc" / "site.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(BASE + f"runtime: {runtime}\n")
    return path


def test_engine_defaults_to_docker(tmp_path: Path) -> None:
    runtime = load_site_config(config_with(tmp_path, "{}")).runtime
    assert (runtime.engine, runtime.podman, runtime.slurm) == ("docker", PodmanSettings(), None)


def test_podman_engine_and_its_socket(tmp_path: Path) -> None:
    text = "{engine: podman, podman: {socket: 'unix:///run/user/990/podman/podman.sock'}}"
    runtime = load_site_config(config_with(tmp_path, text)).runtime
    assert runtime.engine == "podman"
    assert runtime.podman.socket == "unix:///run/user/990/podman/podman.sock"


def test_slurm_engine_settings_with_a_relative_shared_dir(tmp_path: Path) -> None:
    text = (
        "{engine: slurm, slurm: {shared_dir: shared, partition: short, account: onco,"
        " sbatch_options: ['--qos=ptm', '--exclusive'], node_engine: docker}}"
    )
    runtime = load_site_config(config_with(tmp_path, text)).runtime
    assert runtime.slurm == SlurmSettings(
        shared_dir=tmp_path / "etc" / "shared",
        partition="short",
        account="onco",
        sbatch_options=("--qos=ptm", "--exclusive"),
        node_engine="docker",
    )


@pytest.mark.parametrize(
    ("runtime", "problem"),
    [
        ("{engine: slurm}", "runtime.slurm: must be set while runtime.engine is slurm"),
        ("{podman: {socket: 'unix:///p.sock'}}", "runtime.podman: is set, but runtime.engine is"),
        ("{engine: podman, docker_host: 'unix:///d.sock'}", "runtime.docker_host: is set, but"),
        ("{slurm: {shared_dir: /s}}", "runtime.slurm: is set, but runtime.engine is docker"),
        (
            "{engine: slurm, slurm: {shared_dir: /s, sbatch_options: ['--qos=a', '--mem=1G']}}",
            "runtime.slurm.sbatch_options[1]: --mem is set by ptm for every job",
        ),
        (
            "{engine: slurm, slurm: {shared_dir: /s, sbatch_options: ['--time=5']}}",
            "runtime.slurm.sbatch_options[0]: --time is set by ptm",
        ),
    ],
)
def test_engine_settings_that_would_be_ignored_or_overridden_are_refused(
    tmp_path: Path, runtime: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        load_site_config(config_with(tmp_path, runtime))


# ---- the agent on Podman -------------------------------------------------------------------


def podman_site(tmp_path: Path, registry: Path, engine: PodmanEngine) -> Path:
    return write_site_config(
        tmp_path,
        "hospital-a",
        registry,
        runtime={"engine": "podman", "podman": {"socket": engine.socket}},
    )


def test_agent_check_tests_the_chosen_engine(
    bare_registry: Path,
    tmp_path: Path,
    podman_engine: PodmanEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = podman_site(tmp_path, bare_registry, podman_engine)
    capsys.readouterr()
    assert main(["agent", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "podman:" in out and "docker:" not in out and "All checks passed." in out
    elsewhere = write_site_config(
        tmp_path,
        "hospital-a",
        bare_registry,
        runtime={"engine": "podman", "podman": {"socket": f"unix://{tmp_path}/none.sock"}},
    )
    assert main(["agent", "check", "--config", str(elsewhere)]) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if "none.sock" in line]
    assert len(failed) == 1 and "podman:" in failed[0] and not failed[0].startswith("ok")


def test_agent_cycle_on_podman_completes_fails_and_times_out(
    bare_registry: Path, tmp_path: Path, podman_engine: PodmanEngine
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    researcher.submit("done", "echo 41 > /ptm/output/mean.txt; echo finished")
    researcher.submit("broken", "echo 'no such column' >&2; exit 3")
    researcher.submit("slow", "echo begun; sleep 60", timeout=3)
    config = podman_site(tmp_path, bare_registry, podman_engine)
    assert main(["agent", "once", "--config", str(config)]) == 0
    states = {
        task: (remote_status(bare_registry, task) or {}) for task in ("done", "broken", "slow")
    }
    assert {task: status.get("state") for task, status in states.items()} == {
        "done": "completed",
        "broken": "failed",
        "slow": "timed_out",
    }
    assert remote_file(bare_registry, "done", "output/mean.txt") == "41"
    assert states["broken"]["exit_code"] == 3
    assert "no such column" in remote_file(bare_registry, "broken", "log.txt")
    assert "begun" in remote_file(bare_registry, "slow", "log.txt")
