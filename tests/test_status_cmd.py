"""ptm status, against a real bare registry whose results branches are built here with git."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ptm.main import main
from ptm.registry import DEFAULT_BRANCH
from ptm.schema import dump_yaml
from ptm.status import StatusRecord
from ptm.submission import TaskDraft, submit_task, write_task

COMMIT = "3f2c" * 10
DIGEST = "sha256:" + "ab" * 32

# -- helpers other result tests import ---------------------------------------------------------


def add_task(work: Path, task_id: str, sites: tuple[str, ...] = ("hospital-a",)) -> None:
    """Write and submit (unsigned) a task from the clone ``work``."""
    write_task(work, TaskDraft(task_id, "ptm-test/stats:1", sites))
    submit_task(work, task_id, branch=DEFAULT_BRANCH, sign_key=None)


def status_yaml(task: str, site: str, state: str, **extra: Any) -> bytes:
    """status.yaml exactly as an agent writes it (StatusRecord → dump_yaml)."""
    record = StatusRecord(
        task=task,
        site=site,
        state=state,  # type: ignore[arg-type]  # tests pass states as plain strings
        task_commit=COMMIT,
        received_at="2026-11-29T10:00:00Z",
        **extra,
    )
    return dump_yaml(record.to_document()).encode()


def final_result(
    task: str, site: str, *, summary: bytes = b"site,mean\nx,42\n"
) -> dict[str, bytes]:
    """The files of a completed run: status.yaml, log.txt and output/summary.csv."""
    folder = f"results/{task}/{site}"
    outputs = [{"path": "output/summary.csv", "bytes": len(summary), "sha256": "0" * 64}]
    status = status_yaml(
        task,
        site,
        "completed",
        exit_code=0,
        image="ptm-test/stats:1",
        image_id=DIGEST,
        started_at="2026-11-29T10:00:01Z",
        finished_at="2026-11-29T10:00:09Z",
        outputs=tuple(outputs),
    )
    return {
        f"{folder}/status.yaml": status,
        f"{folder}/log.txt": b"hello from the container\n",
        f"{folder}/output/summary.csv": summary,
    }


def _git_bytes(repo: Path, *args: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=repo, input=stdin, capture_output=True, check=True)
    return done.stdout.decode().strip()


def _tree(repo: Path, node: Mapping[str, Any]) -> str:
    lines = []
    for name, value in sorted(node.items()):
        if isinstance(value, Mapping):
            lines.append(f"040000 tree {_tree(repo, value)}\t{name}")
        else:
            mode, data = value if isinstance(value, tuple) else ("100644", value)
            oid = _git_bytes(repo, "hash-object", "-w", "--stdin", stdin=data)
            lines.append(f"{mode} blob {oid}\t{name}")
    # mktree checks nothing about names: it builds the hostile trees ('..') a test needs
    return _git_bytes(repo, "mktree", stdin=("\n".join(lines) + "\n").encode())


def publish(bare: Path, branch: str, files: Mapping[str, Any], message: str = "results") -> str:
    """Commit exactly ``files`` (path → bytes or (mode, bytes)) as the new tip of ``branch``."""
    nested: dict[str, Any] = {}
    for path, value in files.items():
        *folders, name = path.split("/")
        node = nested
        for folder in folders:
            node = node.setdefault(folder, {})
        node[name] = value
    tree = _tree(bare, nested)
    parent = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
        cwd=bare,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    args = ["commit-tree", tree, "-m", message] + (["-p", parent] if parent else [])
    commit = _git_bytes(bare, *args)
    _git_bytes(bare, "update-ref", f"refs/heads/{branch}", commit)
    return commit


class SiteBranch:
    """A site's ``results/<site>`` branch; ``put`` adds files and commits the whole branch."""

    def __init__(self, bare: Path, site: str) -> None:
        self.bare = bare
        self.site = site
        self.files: dict[str, Any] = {}

    def put(self, files: Mapping[str, Any]) -> None:
        self.files.update(files)
        publish(self.bare, f"results/{self.site}", self.files, f"results of {self.site}")

    def report(self, task: str, state: str, **extra: Any) -> None:
        self.put(
            {
                f"results/{task}/{self.site}/status.yaml": status_yaml(
                    task, self.site, state, **extra
                )
            }
        )


def ptm(*args: str) -> int:
    return main(list(args))


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def federation(bare_registry: Path, registry_clone: Path) -> Path:
    """t1 for hospital-a/b/c (a completed, b rejected, c silent), t2 for every site ('*')."""
    add_task(registry_clone, "t1", ("hospital-a", "hospital-b", "hospital-c"))
    add_task(registry_clone, "t2", ("*",))
    SiteBranch(bare_registry, "hospital-a").put(final_result("t1", "hospital-a"))
    long_reason = "image ptm-test/stats:1 is not allowed here: " + "it matches no pattern " * 6
    SiteBranch(bare_registry, "hospital-b").report(
        "t1", "rejected", reason=long_reason, finished_at="2026-11-29T10:00:02Z"
    )
    return registry_clone


def rows_of(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()[1:] if line.strip()]


# -- the overview ------------------------------------------------------------------------------


def test_table_shows_every_task_and_site(
    federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ptm("status", "--registry", str(federation)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["TASK", "SITE", "STATE", "REASON"]
    rows = {(r[0], r[1]): r[2] for r in rows_of(out)[:-1] if len(r) >= 3}
    assert rows[("t1", "hospital-a")] == "completed"
    assert rows[("t1", "hospital-b")] == "rejected"
    assert rows[("t1", "hospital-c")] == "waiting"
    assert rows[("t2", "*")] == "waiting"
    assert not [row for row in rows if row[0] == "example"]  # the template's lives outside tasks/
    rejected = next(line for line in lines if "rejected" in line)
    assert "is not allowed here" in rejected and rejected.endswith("…")
    assert len(rejected) < 140
    assert "2 tasks, 2 sites with results branches: 1 completed, 1 rejected, 1 waiting" in out


def test_table_json_shape(federation: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ptm("status", "--json", "--registry", str(federation)) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["sites"] == ["hospital-a", "hospital-b"]
    assert document["ignored_branches"] == []
    tasks = {t["task"]: t for t in document["tasks"]}
    assert set(tasks) == {"t1", "t2"}
    t1 = tasks["t1"]
    assert t1["sites_requested"] == ["hospital-a", "hospital-b", "hospital-c"]
    assert t1["cancelled"] is False and t1["problem"] is None
    assert [(s["site"], s["state"]) for s in t1["sites"]] == [
        ("hospital-a", "completed"),
        ("hospital-b", "rejected"),
        ("hospital-c", "waiting"),
    ]
    assert t1["sites"][1]["reason"].startswith("image ptm-test/stats:1 is not allowed")
    assert tasks["t2"]["sites_requested"] == ["*"] and tasks["t2"]["sites"] == []


def test_table_works_from_a_folder_inside_the_clone(
    federation: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(federation / "tasks")
    assert ptm("status") == 0
    assert "completed" in capsys.readouterr().out


def test_results_pushed_after_clone_are_fetched(
    bare_registry: Path, federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    SiteBranch(bare_registry, "hospital-c").report(
        "t1", "running", started_at="2026-11-29T10:01:00Z"
    )
    SiteBranch(bare_registry, "hospital-d").report("t2", "failed", reason="exit code 3")
    assert ptm("status", "--json", "--registry", str(federation)) == 0
    tasks = {t["task"]: t for t in json.loads(capsys.readouterr().out)["tasks"]}
    assert {s["site"]: s["state"] for s in tasks["t1"]["sites"]}["hospital-c"] == "running"
    assert tasks["t2"]["sites"] == [
        {"site": "hospital-d", "state": "failed", "reason": "exit code 3"}
    ]


def test_no_fetch_uses_what_was_fetched_last(
    bare_registry: Path, federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ptm("status", "--registry", str(federation)) == 0
    SiteBranch(bare_registry, "hospital-c").report("t1", "running")
    capsys.readouterr()
    assert ptm("status", "--no-fetch", "--registry", str(federation)) == 0
    assert "running" not in capsys.readouterr().out


def test_hostile_and_broken_branches(
    bare_registry: Path, federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a branch whose site name has a slash, a site speaking for another, a broken status.yaml
    publish(bare_registry, "results/evil/x", {"results/t1/evil/x/status.yaml": b"ptm: 1\n"})
    SiteBranch(bare_registry, "hospital-m").put(
        {"results/t1/hospital-c/status.yaml": status_yaml("t1", "hospital-c", "completed")}
    )
    SiteBranch(bare_registry, "hospital-n").put(
        {"results/t2/hospital-n/status.yaml": b"ptm: 1\nstate: [unclosed\n"}
    )
    SiteBranch(bare_registry, "hospital-o").report("t1", "completed")  # not named by t1
    assert ptm("status", "--json", "--registry", str(federation)) == 0
    captured = capsys.readouterr()
    assert "ignored branch 'results/evil/x'" in captured.err
    document = json.loads(captured.out)
    assert document["ignored_branches"] == ["results/evil/x"]
    tasks = {t["task"]: t for t in document["tasks"]}
    t1_sites = {s["site"]: s["state"] for s in tasks["t1"]["sites"]}
    assert t1_sites["hospital-c"] == "waiting"  # hospital-m cannot report for hospital-c
    assert t1_sites["hospital-o"] == "completed"  # shown although t1 did not ask for it
    assert "evil" not in json.dumps(tasks)
    broken = tasks["t2"]["sites"][0]
    assert broken["site"] == "hospital-n" and broken["state"] == "invalid"
    assert "results/hospital-n:results/t2/hospital-n/status.yaml" in broken["reason"]


def test_status_of_another_task_in_the_file_is_invalid(
    bare_registry: Path, federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    SiteBranch(bare_registry, "hospital-c").put(
        {"results/t1/hospital-c/status.yaml": status_yaml("t2", "hospital-c", "completed")}
    )
    assert ptm("status", "--json", "--registry", str(federation)) == 0
    tasks = {t["task"]: t for t in json.loads(capsys.readouterr().out)["tasks"]}
    site_c = next(s for s in tasks["t1"]["sites"] if s["site"] == "hospital-c")
    assert site_c["state"] == "invalid" and "must be 't1' and 'hospital-c'" in site_c["reason"]


def test_empty_registry(registry_clone: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ptm("status", "--registry", str(registry_clone)) == 0
    assert capsys.readouterr().out.strip() == "No tasks in the registry yet."


def test_not_a_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ptm("status", "--registry", str(tmp_path)) == 1
    assert "not inside a registry clone" in capsys.readouterr().err


# -- one task ----------------------------------------------------------------------------------


def test_detail(federation: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ptm("status", "t1", "--registry", str(federation)) == 0
    out = capsys.readouterr().out
    assert out.startswith("Task t1\n  image        ptm-test/stats:1\n")
    assert "  sites        hospital-a, hospital-b, hospital-c" in out
    block_a = out.split("\nhospital-a  completed\n")[1].split("\n\n")[0]
    assert "  exit code    0" in block_a
    assert f"  image        {DIGEST}" in block_a
    assert "  finished     2026-11-29T10:00:09Z" in block_a
    assert "  output       output/summary.csv (15 bytes)" in block_a
    assert "\nhospital-b  rejected: image ptm-test/stats:1 is not allowed here" in out
    assert "\nhospital-c  waiting  (no report yet)" in out


def test_detail_json(federation: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ptm("status", "t1", "--json", "--registry", str(federation)) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["task"] == "t1" and document["image"] == "ptm-test/stats:1"
    assert document["done"] is False and document["cancelled"] is None
    sites = {s["site"]: s for s in document["sites"]}
    assert sites["hospital-a"]["status"]["exit_code"] == 0
    assert sites["hospital-a"]["status"]["outputs"][0]["path"] == "output/summary.csv"
    assert sites["hospital-b"]["state"] == "rejected" and sites["hospital-b"]["reason"]
    assert sites["hospital-c"] == {
        "site": "hospital-c",
        "state": "waiting",
        "reason": None,
        "status": None,
    }


def test_detail_validates_fully(
    bare_registry: Path, federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # readable by the overview's quick reading, but finished_at is not a timestamp
    text = status_yaml("t1", "hospital-c", "completed").replace(
        b"ptm: 1\n", b"ptm: 1\nfinished_at: soon\n"
    )
    SiteBranch(bare_registry, "hospital-c").put({"results/t1/hospital-c/status.yaml": text})
    assert ptm("status", "t1", "--json", "--registry", str(federation)) == 0
    sites = {s["site"]: s for s in json.loads(capsys.readouterr().out)["sites"]}
    assert sites["hospital-c"]["state"] == "invalid"
    assert "finished_at" in sites["hospital-c"]["reason"]


def test_detail_of_unknown_task(federation: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ptm("status", "nope", "--registry", str(federation)) == 1
    assert "no task 'nope' in the registry" in capsys.readouterr().err


def test_detail_refuses_hostile_task_id(
    federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ptm("status", "../t1", "--registry", str(federation)) == 1
    assert "not a valid task id" in capsys.readouterr().err


# -- how it reads: few git processes, a cache clone for URLs -----------------------------------


def _git_processes(trace: Path) -> list[str]:
    return [line for line in trace.read_text().splitlines() if "trace: built-in: git" in line]


def test_few_git_processes_whatever_the_number_of_sites(
    bare_registry: Path,
    federation: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for n in range(10):
        site = f"site-{n:02d}"
        SiteBranch(bare_registry, site).put(
            {
                f"results/{t}/{site}/status.yaml": status_yaml(t, site, "completed")
                for t in ("t1", "t2")
            }
        )
    assert ptm("status", "--registry", str(federation)) == 0  # fetches the new branches
    (federation / ".git" / "ptm-overview-memo.json").unlink()  # read every file again
    trace = tmp_path / "trace.txt"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    assert ptm("status", "--no-fetch", "--registry", str(federation)) == 0
    commands = _git_processes(trace)
    # rev-parse, for-each-ref, then one cat-file for the root trees and one per tree level
    # (a --batch-command session: sizes, then contents) for the tasks branch (root, tasks/,
    # task folders) and for all sites together (root, results/, task folders, site folders),
    # one to read the files
    assert len(commands) == 2 + (1 + 3) + (1 + 4) + 1, commands
    assert sum("cat-file" in c for c in commands) == len(commands) - 2
    trace.unlink()
    assert ptm("status", "t1", "--no-fetch", "--registry", str(federation)) == 0
    # for-each-ref, rev-parse; the roots of all branches, then one per level for the task's
    # and every site's paths together (root, tasks/ or results/, t1/, the site's folder), and
    # one to read task.yaml, cancel.yaml and every status.yaml
    assert len(_git_processes(trace)) == 2 + 1 + 4 + 1
    assert "site-09  completed" in capsys.readouterr().out


def test_overview_reads_only_files_that_changed(
    bare_registry: Path,
    federation: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    memo = federation / ".git" / "ptm-overview-memo.json"
    assert ptm("status", "--registry", str(federation)) == 0
    readings = json.loads(memo.read_text())["readings"]
    assert len(readings) == 2 + 2  # two task.yaml, two status.yaml
    trace = tmp_path / "trace.txt"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    assert ptm("status", "--no-fetch", "--registry", str(federation)) == 0
    # nothing moved: no branch is listed again, no file read again
    assert [c.split("git ", 1)[1].split()[0] for c in _git_processes(trace)] == [
        "rev-parse",
        "for-each-ref",
    ]
    monkeypatch.delenv("GIT_TRACE")
    SiteBranch(bare_registry, "hospital-b").report("t1", "denied", reason="not approved")
    capsys.readouterr()
    assert ptm("status", "--registry", str(federation)) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "hospital-b" in line)
    assert row.split() == ["t1", "hospital-b", "denied", "not", "approved"]
    document = json.loads(memo.read_text())
    assert len(document["readings"]) == 4  # the old status is forgotten
    assert len(document["listings"]) == 1 + 2  # the tasks branch and two results branches
    memo.write_text("{not json")
    assert ptm("status", "--no-fetch", "--registry", str(federation)) == 0
    assert "1 completed, 1 denied, 1 waiting" in capsys.readouterr().out
    assert json.loads(memo.read_text())["format"] == 3


def test_url_reads_through_a_cache_clone(
    bare_registry: Path,
    federation: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.chdir(tmp_path)
    assert ptm("status", "--url", f"file://{bare_registry}") == 0
    assert "completed" in capsys.readouterr().out
    clones = list((cache / "ptm" / "registries").glob("registry-*"))
    assert [c.suffix for c in clones if c.is_dir()] == [""]
    SiteBranch(bare_registry, "hospital-c").report("t1", "crashed", reason="out of memory")
    assert ptm("status", "t1", "--url", f"file://{bare_registry}") == 0
    assert "hospital-c  crashed: out of memory" in capsys.readouterr().out
    assert len([c for c in (cache / "ptm" / "registries").iterdir() if c.is_dir()]) == 1


def test_registry_and_url_exclude_each_other(federation: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ptm("status", "--registry", str(federation), "--url", "file:///x")
    assert exit_info.value.code == 2
