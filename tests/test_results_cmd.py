"""ptm results: copying result files safely, and --wait against branches that change meanwhile."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from ptm.commands.results_cmd import ProgressLine
from ptm.federation import TaskStatus
from ptm.main import main
from ptm.result_files import is_safe_relative_path
from tests.test_status_cmd import SiteBranch, add_task, final_result, publish, status_yaml


@pytest.fixture
def work(bare_registry: Path, registry_clone: Path) -> Path:
    """t1 for hospital-a and hospital-b; hospital-a completed, hospital-b still running."""
    add_task(registry_clone, "t1", ("hospital-a", "hospital-b"))
    SiteBranch(bare_registry, "hospital-a").put(final_result("t1", "hospital-a"))
    SiteBranch(bare_registry, "hospital-b").report(
        "t1", "running", started_at="2026-11-29T10:00:05Z"
    )
    return registry_clone


def results(clone_dir: Path, *args: str) -> int:
    return main(["results", *args, "--registry", str(clone_dir)])


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def test_copies_status_log_and_output(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert results(work, "t1", "--out", str(out)) == 0
    assert files_under(out) == {
        "hospital-a/status.yaml",
        "hospital-a/log.txt",
        "hospital-a/output/summary.csv",
        "hospital-b/status.yaml",
    }
    assert (out / "hospital-a" / "output" / "summary.csv").read_text() == "site,mean\nx,42\n"
    assert "state: running" in (out / "hospital-b" / "status.yaml").read_text()
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["SITE", "STATE", "OUTPUT", "FILES", "FOLDER", "REASON"]
    assert table[1].split()[:3] == ["hospital-a", "completed", "1"]


def test_default_folder_and_json(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert results(work, "t1", "--json", "--site", "hospital-a") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["out"] == "results/t1"
    assert list(document["sites"]) == ["hospital-a"]
    site = document["sites"]["hospital-a"]
    assert site["state"] == "completed" and site["refused"] == []
    assert site["files"] == ["log.txt", "output/summary.csv", "status.yaml"]
    assert (tmp_path / "results" / "t1" / "hospital-a" / "log.txt").is_file()
    assert not (tmp_path / "results" / "t1" / "hospital-b").exists()


def test_a_second_run_replaces_each_site_folder(
    bare_registry: Path, work: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert results(work, "t1", "--out", str(out)) == 0
    (out / "hospital-b" / "stale.txt").write_text("from an earlier run\n")
    SiteBranch(bare_registry, "hospital-b").put(final_result("t1", "hospital-b", summary=b"b\n"))
    assert results(work, "t1", "--out", str(out)) == 0
    assert files_under(out / "hospital-b") == {"status.yaml", "log.txt", "output/summary.csv"}
    assert (out / "hospital-b" / "output" / "summary.csv").read_text() == "b\n"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_unknown_task(work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert results(work, "nope", "--out", str(tmp_path / "out")) == 1
    assert "no task 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- hostile branches --------------------------------------------------------------------------


def test_hostile_paths_are_not_written_outside_the_folder(
    bare_registry: Path, work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = "hospital-a"
    folder = f"results/t1/{site}"
    SiteBranch(bare_registry, site).put(
        {
            **final_result("t1", site),
            f"{folder}/output/../../../../../escaped-1": b"inside the prefix, climbing out\n",
            "results/t1/../../escaped-2": b"outside the prefix\n",
            f"{folder}/output/link": ("120000", b"../../../../../../etc/passwd"),
            f"{folder}/output/.": b"dot\n",
            f"{folder}/output/ok.txt": b"fine\n",
        }
    )
    publish(bare_registry, "results/bad/x", {"results/t1/bad/x/output/f": b"slash in site\n"})
    publish(bare_registry, "results/evil", {"results/t1/hospital-b/output/f": b"not its own\n"})
    out = tmp_path / "deep" / "out"
    assert results(work, "t1", "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert f"{folder}/output/..: the name is '..' [name]" in err
    assert f"{folder}/output/link: is a symbolic link" in err
    every_file = files_under(tmp_path)
    assert not [f for f in every_file if "escaped" in f or f.endswith("/f")]
    assert files_under(out / site) == {
        "status.yaml",
        "log.txt",
        "output/summary.csv",
        "output/ok.txt",
    }
    assert not (out / site / "output" / "link").exists()
    assert not (out / "bad").exists()
    assert files_under(out / "hospital-b") == {"status.yaml"}  # evil wrote into b's folder


def test_existing_symlink_for_a_site_is_replaced_not_followed(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious\n")
    out.mkdir()
    (out / "hospital-a").symlink_to(victim)
    assert results(work, "t1", "--out", str(out)) == 0
    assert not (out / "hospital-a").is_symlink()
    assert (out / "hospital-a" / "output" / "summary.csv").is_file()
    assert files_under(victim) == {"keep.txt"}


@pytest.mark.parametrize(
    ("path", "safe"),
    [
        ("output/a.csv", True),
        ("output/sub/B.CSV", True),
        ("../x", False),
        ("/etc/x", False),
        ("a//b", False),
        ("a/./b", False),
        ("a/b/..", False),
        ("a\nb", False),
        ("", False),
    ],
)
def test_safe_relative_paths(path: str, safe: bool) -> None:
    assert is_safe_relative_path(path) is safe


# -- waiting -----------------------------------------------------------------------------------


def test_wait_times_out_with_exit_code_1(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    code = results(work, "t1", "--wait", "--timeout", "1", "--interval", "0.2", "--out", str(out))
    assert code == 1
    assert time.monotonic() - started < 20
    err = capsys.readouterr().err
    assert "timed out after 1s waiting for task t1: not finished at hospital-b (running)" in err
    assert "collected what there is in" in err
    # not a terminal: plain lines, each printed once, no carriage returns
    assert "t1: 1/2 sites finished (waiting: hospital-b running)\n" in err
    assert err.count("1/2 sites finished") == 1 and "\r" not in err
    assert (out / "hospital-a" / "output" / "summary.csv").is_file()


def test_wait_returns_when_a_site_finishes_later(
    bare_registry: Path, work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def finish_later() -> None:
        time.sleep(1.0)
        SiteBranch(bare_registry, "hospital-b").put(
            final_result("t1", "hospital-b", summary=b"b\n")
        )

    pusher = threading.Thread(target=finish_later)
    pusher.start()
    out = tmp_path / "out"
    try:
        code = results(
            work, "t1", "--wait", "--timeout", "60", "--interval", "0.2", "--out", str(out)
        )
    finally:
        pusher.join()
    assert code == 0
    assert (out / "hospital-b" / "output" / "summary.csv").read_text() == "b\n"
    err = capsys.readouterr().err
    assert "1/2 sites finished" in err and "2/2 sites finished" in err


def test_wait_for_every_site_task_needs_a_report(
    bare_registry: Path, registry_clone: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_task(registry_clone, "all", ("*",))
    out = tmp_path / "out"
    code = results(
        registry_clone, "all", "--wait", "--timeout", "0.5", "--interval", "0.1", "--out", str(out)
    )
    assert code == 1
    assert "waiting for a first site to report" in capsys.readouterr().err
    SiteBranch(bare_registry, "hospital-z").report("all", "rejected", reason="not for us")
    assert results(registry_clone, "all", "--wait", "--timeout", "5", "--out", str(out)) == 0
    # --site names sites to wait for, even before they report
    code = results(
        registry_clone,
        "all",
        "--wait",
        "--site",
        "hospital-y",
        "--timeout",
        "0.5",
        "--interval",
        "0.1",
        "--out",
        str(out),
    )
    assert code == 1
    assert "hospital-y (waiting)" in capsys.readouterr().err


def test_wait_without_timeout_reads_a_finished_task_at_once(
    bare_registry: Path, work: Path, tmp_path: Path
) -> None:
    SiteBranch(bare_registry, "hospital-b").report("t1", "failed", reason="exit code 1")
    assert results(work, "t1", "--wait", "--out", str(tmp_path / "out")) == 0


def _read_all(leader: int) -> bytes:
    """Everything written to a pty whose other end is closed (one read may return a part)."""
    chunks = []
    try:
        while chunk := os.read(leader, 4096):
            chunks.append(chunk)
    except OSError:  # EIO: the other end is closed and everything was read
        pass
    finally:
        os.close(leader)
    return b"".join(chunks)


def test_progress_line_rewrites_itself_on_a_terminal(bare_registry: Path, work: Path) -> None:
    from ptm.api import Registry

    status: TaskStatus = Registry.open(work).status("t1")
    leader, follower = os.openpty()
    with open(follower, "w", encoding="utf-8", closefd=True) as terminal:
        progress = ProgressLine(terminal)
        progress.show(status, 1.0, [])
        progress.show(status, 2.0, [])
        progress.close()
    written = _read_all(leader).decode()
    assert written.replace("\r\n", "\n").count("\r") == 2
    assert "t1: 1/2 sites finished (waiting: hospital-b running) · 2s" in written
    assert written.rstrip(" ").endswith(("\n", "\r\n"))


def test_results_from_a_url(
    bare_registry: Path, work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["results", "t1", "--url", str(bare_registry), "--out", str(out)]) == 0
    assert (out / "hospital-a" / "log.txt").read_text() == "hello from the container\n"
    cached = list((tmp_path / "cache" / "ptm" / "registries").glob("registry-*/.git"))
    assert len(cached) == 1


def test_status_yaml_helper_is_what_an_agent_writes() -> None:
    text = status_yaml("t1", "s", "running").decode()
    assert text.startswith("ptm: 1\ntask: t1\nsite: s\nstate: running\n")
