"""The site agent against a real bare registry and a real Docker engine."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptm.main import main
from ptm.watch import retry_delay
from tests.agent_support import (
    Researcher,
    remote_file,
    remote_status,
    site_agent,
    states_in_history,
    write_site_config,
)
from tests.fixtures_git import git

pytestmark = pytest.mark.docker


@pytest.fixture
def researcher(bare_registry: Path, tmp_path: Path) -> Researcher:
    return Researcher(bare_registry, tmp_path / "researcher")


def test_task_runs_and_its_result_arrives_on_the_site_branch(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    script = (
        "echo starting; cat /ptm/config/config.yaml; cat /ptm/input/greeting.txt;"
        ' echo "$PTM_TASK_ID $PTM_SITE" > /ptm/output/who.txt;'
        " mkdir /ptm/output/sub && printf 'x,y\\n1,2\\n' > /ptm/output/sub/table.csv"
    )
    greeting = tmp_path / "greeting.txt"
    greeting.write_text("hello from the researcher\n")
    researcher.submit("first", script, config={"column": "age"}, files=(greeting,))
    agent = site_agent(tmp_path, "hospital-a", bare_registry)

    report = agent.once()

    assert report.started == 1 and report.pushed
    status = remote_status(bare_registry, "first")
    assert status is not None
    assert status["state"] == "completed", status
    assert status["exit_code"] == 0
    assert status["image_id"].startswith("sha256:")
    assert status["task_commit"] == git(bare_registry, "rev-parse", "main")
    assert remote_file(bare_registry, "first", "output/who.txt") == "first hospital-a"
    table = "x,y\n1,2\n"
    assert remote_file(bare_registry, "first", "output/sub/table.csv") == table.strip()
    outputs = {o["path"]: o for o in status["outputs"]}
    assert outputs["output/sub/table.csv"]["sha256"] == hashlib.sha256(table.encode()).hexdigest()
    log = remote_file(bare_registry, "first", "log.txt")
    assert "starting" in log and "column: age" in log and "hello from the researcher" in log
    # pull: never and the image present: nothing is pulled, so no 'pulling' is recorded
    assert states_in_history(bare_registry, "first") == ["accepted", "running", "completed"]


def test_second_cycle_does_not_run_a_task_again(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    researcher.submit("once-only", "date +%s%N > /ptm/output/stamp")
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.once()
    stamp = remote_file(bare_registry, "once-only", "output/stamp")
    again = agent.once()
    assert again.new_tasks == 0 and not again.pushed
    fresh = site_agent(tmp_path, "hospital-a", bare_registry)
    fresh.once()
    assert remote_file(bare_registry, "once-only", "output/stamp") == stamp
    assert states_in_history(bare_registry, "once-only").count("running") == 1


def test_two_sites_push_their_own_branches(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    researcher.submit("both", "echo $PTM_SITE > /ptm/output/site", sites=("*",))
    agents = [site_agent(tmp_path, s, bare_registry) for s in ("hospital-a", "hospital-b")]
    for agent in agents:
        agent.once()
    for site in ("hospital-a", "hospital-b"):
        assert remote_file(bare_registry, "both", "output/site", site=site) == site
        files = git(bare_registry, "ls-tree", "-r", "--name-only", f"results/{site}").split()
        assert all(f.startswith(f"results/both/{site}/") for f in files)


def test_task_for_another_site_is_left_alone(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    researcher.submit("elsewhere", sites=("hospital-b",))
    site_agent(tmp_path, "hospital-a", bare_registry).once()
    assert remote_status(bare_registry, "elsewhere") is None


@pytest.mark.parametrize(
    ("image", "words"),
    [
        ("evil/ptm-test/busybox:latest", "allow-list"),
        ("ptm-test/busybox", "allow-list"),
    ],
)
def test_image_outside_the_allow_list_is_rejected_with_the_reason(
    bare_registry: Path,
    tmp_path: Path,
    researcher: Researcher,
    image: str,
    words: str,
    docker_client: object,
) -> None:
    researcher.submit("bad-image", image=image)
    site_agent(tmp_path, "hospital-a", bare_registry).once()
    status = remote_status(bare_registry, "bad-image")
    assert status is not None and status["state"] == "rejected"
    assert words in status["reason"] and "policy.allowed_images" in status["reason"]
    assert status["started_at"] is None


def test_limits_above_the_site_caps_are_rejected(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    researcher.submit("greedy", timeout=500, memory="8g")
    site_agent(tmp_path, "hospital-a", bare_registry).once()
    status = remote_status(bare_registry, "greedy")
    assert status is not None and status["state"] == "rejected"
    assert "limits.timeout" in status["reason"] and "limits.memory" in status["reason"]


def test_invalid_task_naming_this_site_is_rejected(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    researcher.commit_file(
        "tasks/typo/task.yaml",
        "ptm: 1\nimage: ptm-test/busybox:latest\nsites: [hospital-a]\nimgae: x\n",
        "a task with a typo, pushed without ptm validate",
    )
    site_agent(tmp_path, "hospital-a", bare_registry).once()
    status = remote_status(bare_registry, "typo")
    assert status is not None and status["state"] == "rejected"
    assert "imgae" in status["reason"]


def test_timeout_kills_the_container(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    researcher.submit("slow", "echo begun; sleep 60", timeout=2)
    started = time.monotonic()
    site_agent(tmp_path, "hospital-a", bare_registry).once()
    assert time.monotonic() - started < 50
    status = remote_status(bare_registry, "slow")
    assert status is not None and status["state"] == "timed_out"
    assert "begun" in remote_file(bare_registry, "slow", "log.txt")


def test_failing_container_is_failed_with_exit_code_and_log(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    researcher.submit("broken", "echo 'no such column: age' >&2; exit 3")
    site_agent(tmp_path, "hospital-a", bare_registry).once()
    status = remote_status(bare_registry, "broken")
    assert status is not None and status["state"] == "failed"
    assert status["exit_code"] == 3
    assert "no such column: age" in remote_file(bare_registry, "broken", "log.txt")


def test_registry_down_then_back_loses_nothing(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    researcher.submit("patient", "echo kept > /ptm/output/result")
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.cycle()
    hidden = bare_registry.with_name("registry-away.git")
    bare_registry.rename(hidden)
    try:
        agent.drain()
        assert agent.publish() is False
        assert agent.ledger.unpushed()
        with pytest.raises(Exception, match="git"):
            agent.cycle()
    finally:
        hidden.rename(bare_registry)
    agent.once()
    assert not agent.ledger.unpushed()
    status = remote_status(bare_registry, "patient")
    assert status is not None and status["state"] == "completed"
    assert remote_file(bare_registry, "patient", "output/result") == "kept"


def test_cancel_stops_a_running_container(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    researcher.submit("long", "echo working; sleep 100")
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.cycle()
    _wait_for(lambda: (agent.ledger.status_of("long") or _Blank()).state == "running")
    researcher.commit_file("tasks/long/cancel.yaml", "ptm: 1\nreason: wrong column\n", "cancel")
    started = time.monotonic()
    agent.cycle()
    agent.drain()
    agent.publish()
    assert time.monotonic() - started < 60
    status = remote_status(bare_registry, "long")
    assert status is not None and status["state"] == "cancelled"


def test_cancel_before_start_never_runs(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    researcher.submit("never", "echo ran > /ptm/output/x")
    researcher.commit_file("tasks/never/cancel.yaml", "ptm: 1\nreason: oops\n", "cancel")
    site_agent(tmp_path, "hospital-a", bare_registry).once()
    status = remote_status(bare_registry, "never")
    assert status is not None and status["state"] == "cancelled"
    assert "running" not in states_in_history(bare_registry, "never")


def test_rewritten_tasks_branch_halts_the_agent(
    bare_registry: Path,
    tmp_path: Path,
    researcher: Researcher,
    docker_client: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    researcher.submit("before", "true")
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.once()
    git(researcher.work, "reset", "-q", "--hard", "HEAD~1")
    sneaky = researcher.work / "tasks" / "sneaky"
    sneaky.mkdir(parents=True)
    (sneaky / "task.yaml").write_text("ptm: 1\nimage: ptm-test/busybox:latest\nsites: ['*']\n")
    git(researcher.work, "add", "tasks/sneaky")
    git(researcher.work, "commit", "-q", "-m", "history rewritten under the sites' feet")
    git(researcher.work, "push", "-q", "--force", "origin", "HEAD:main")
    agent.once()
    assert remote_status(bare_registry, "sneaky") is None
    state = agent.workdir.load_state()
    assert state.halted is not None and "rewritten" in state.halted
    config = tmp_path / "hospital-a.yaml"
    assert main(["agent", "status", "--config", str(config)]) == 0
    assert "HALTED" in capsys.readouterr().out


def test_change_to_a_task_already_acted_on_is_ignored_and_shown(
    bare_registry: Path,
    tmp_path: Path,
    researcher: Researcher,
    docker_client: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    researcher.submit("settled", "echo first > /ptm/output/r")
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.once()
    researcher.commit_file(
        "tasks/settled/task.yaml",
        "ptm: 1\nimage: ptm-test/busybox:latest\nsites: [hospital-a]\n"
        "command: [sh, -c, 'echo second > /ptm/output/r']\n",
        "edit",
    )
    report = agent.once()
    assert report.started == 0
    assert remote_file(bare_registry, "settled", "output/r") == "first"
    assert states_in_history(bare_registry, "settled").count("running") == 1
    config = tmp_path / "hospital-a.yaml"
    capsys.readouterr()
    assert main(["agent", "status", "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "WARNING: task settled was changed" in shown and "after this site acted" in shown


def test_idle_cycles_do_not_leak_processes_or_files(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    researcher.submit("warmup", "true")
    agent = site_agent(tmp_path, "hospital-a", bare_registry)
    agent.once()
    agent.cycle()
    before = (_children(), _open_fds())
    for _ in range(200):
        report = agent.cycle()
        assert report.idle
    after = (_children(), _open_fds())
    assert after[0] <= before[0]
    assert after[1] <= before[1] + 2


class _Blank:
    state = None


def _wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def _children() -> int:
    me = str(os.getpid())
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            count += fields[1] == me
    return count


def _open_fds() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


def test_agent_check_reports_what_it_found(
    bare_registry: Path, tmp_path: Path, docker_client: object, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_site_config(tmp_path, "hospital-a", bare_registry)
    capsys.readouterr()
    assert main(["agent", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "registry:" in out and "branch main at" in out and "All checks passed." in out
    (tmp_path / "elsewhere").mkdir()
    missing = write_site_config(tmp_path / "elsewhere", "hospital-a", tmp_path / "nowhere.git")
    assert main(["agent", "check", "--config", str(missing)]) == 1
    out = capsys.readouterr().out  # every check runs and reports, failed ones marked FAIL
    assert "FAIL registry:" in out and "nowhere.git" in out and "checks failed." in out


def test_retry_delay_backs_off_to_ten_minutes() -> None:
    assert [retry_delay(30, n) for n in range(6)] == [30, 30, 60, 120, 240, 480]
    assert retry_delay(30, 20) == 600
    assert retry_delay(900, 3) == 900  # a long poll interval is never shortened


def test_invalid_task_for_another_site_is_left_alone_even_if_its_text_names_us(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    researcher.commit_file(
        "tasks/elsewhere-typo/task.yaml",
        "ptm: 1\nimage: x:1\nsites: [hospital-b]\ndescription: compare with hospital-a\nimgae: x\n",
        "invalid, for hospital-b only",
    )
    researcher.commit_file("tasks/broken-yaml/task.yaml", "sites: [hospital-a\n", "not YAML")
    site_agent(tmp_path, "hospital-a", bare_registry).once()
    assert remote_status(bare_registry, "elsewhere-typo") is None
    assert remote_status(bare_registry, "broken-yaml") is None


def test_site_environment_and_read_only_data_mounts_reach_the_container(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    data = tmp_path / "site-data"
    data.mkdir()
    data.chmod(0o755)
    (data / "patients.csv").write_text("age\n54\n")
    (data / "patients.csv").chmod(0o644)
    script = (
        'echo "$SPARQL_ENDPOINT" > /ptm/output/endpoint; cat /data/patients.csv > /ptm/output/rows;'
        " if touch /data/new 2>/dev/null; then echo writable; else echo read-only; fi"
        " > /ptm/output/mount"
    )
    researcher.submit("uses-data", script)
    site_agent(
        tmp_path,
        "hospital-a",
        bare_registry,
        environment={"SPARQL_ENDPOINT": "http://sparql.internal:8890/sparql"},
        mounts=[{"source": str(data), "target": "/data"}],
    ).once()
    status = remote_status(bare_registry, "uses-data")
    assert status is not None and status["state"] == "completed", status
    endpoint = remote_file(bare_registry, "uses-data", "output/endpoint")
    assert endpoint == "http://sparql.internal:8890/sparql"
    assert remote_file(bare_registry, "uses-data", "output/rows") == "age\n54"
    assert remote_file(bare_registry, "uses-data", "output/mount") == "read-only"
    assert not (data / "new").exists()


def test_json_log_lines_name_task_and_decision(
    bare_registry: Path, tmp_path: Path, researcher: Researcher, docker_client: object
) -> None:
    researcher.submit("logged", "true")
    researcher.submit("refused", image="evil/x:1")
    config = write_site_config(tmp_path, "hospital-a", bare_registry)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptm",
            "agent",
            "once",
            "--config",
            str(config),
            "--log-format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    decisions = {(e.get("task"), e.get("decision")) for e in lines}
    assert {("logged", "accepted"), ("logged", "completed"), ("refused", "rejected")} <= decisions
    refused = next(e for e in lines if e.get("task") == "refused")
    assert refused["site"] == "hospital-a" and "policy.allowed_images" in refused["reason"]
