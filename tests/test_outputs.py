"""collect_outputs: hostile output folders made by real containers, and by hand on the host."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest

from ptm.errors import OutputRejected
from ptm.outputs import (
    MAX_PATH_BYTES,
    CollectedFile,
    OutputReport,
    SkippedEntry,
    collect_outputs,
    name_problem,
)
from ptm.runtimes.base import ContainerSpec
from ptm.runtimes.docker import DockerRuntime
from tests.fixtures_docker import RUN_ID, unavailable

GENEROUS = {"max_bytes": 10 * 1024**2, "max_files": 100, "max_depth": 8}


def collect(source: Path, dest: Path, **limits: int) -> OutputReport:
    return collect_outputs(source, dest, **{**GENEROUS, **limits})


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def assert_nothing_left(dest: Path) -> None:
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}")] == []


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "output"
    folder.mkdir()
    return folder


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "run" / "collected"


# ---- regular files -----------------------------------------------------------------------------


def test_regular_files_are_copied_with_sizes_and_checksums(out: Path, dest: Path) -> None:
    (out / "summary.csv").write_bytes(b"site,mean\na,41\n")
    (out / "plots").mkdir()
    (out / "plots" / "age.png").write_bytes(b"\x89PNG")
    (out / "empty-folder").mkdir()
    report = collect(out, dest)
    assert report.files == (
        CollectedFile("plots/age.png", 4, sha(b"\x89PNG")),
        CollectedFile("summary.csv", 15, sha(b"site,mean\na,41\n")),
    )
    assert report.skipped == ()
    assert report.total_bytes == 19
    assert tree(dest) == {"plots/age.png": b"\x89PNG", "summary.csv": b"site,mean\na,41\n"}
    assert not (dest / "empty-folder").exists()


def test_copies_get_plain_modes_whatever_the_container_set(out: Path, dest: Path) -> None:
    script = out / "run.sh"
    script.write_text("echo\n")
    script.chmod(0o6777)  # setuid, setgid, world-writable
    collect(out, dest)
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o644
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755


def test_a_missing_output_folder_is_an_empty_output(tmp_path: Path, dest: Path) -> None:
    assert collect(tmp_path / "never-made", dest) == OutputReport((), ())
    assert list(dest.iterdir()) == []


def test_destination_must_not_exist(out: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    with pytest.raises(FileExistsError):
        collect(out, dest)


# ---- what is skipped ---------------------------------------------------------------------------


def test_symlinks_are_skipped_never_followed(out: Path, dest: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("s3cret")
    (out / "passwd").symlink_to("/etc/passwd")
    (out / "host-folder").symlink_to(secret)
    (out / "dangling").symlink_to("/no/such/file")
    report = collect(out, dest)
    assert report.files == ()
    assert {s.path for s in report.skipped} == {"dangling", "host-folder", "passwd"}
    assert {s.reason for s in report.skipped} == {"symbolic link, not followed"}
    assert tree(dest) == {}
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_hard_links_are_skipped_by_every_name(out: Path, dest: Path) -> None:
    (out / "shared.txt").write_text("one inode")
    os.link(out / "shared.txt", out / "again.txt")
    (out / "single.txt").write_text("alone")
    report = collect(out, dest)
    assert [f.path for f in report.files] == ["single.txt"]
    assert report.skipped == (
        SkippedEntry("again.txt", "hard link (one of 2 names of a file)"),
        SkippedEntry("shared.txt", "hard link (one of 2 names of a file)"),
    )


def test_fifos_and_sockets_are_skipped_without_blocking(out: Path, dest: Path) -> None:
    os.mkfifo(out / "pipe")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(out / "sock"))
        report = collect(out, dest)
    assert report.skipped == (
        SkippedEntry("pipe", "named pipe (fifo)"),
        SkippedEntry("sock", "socket"),
    )
    assert list(dest.iterdir()) == []


def test_devices_are_skipped(out: Path, dest: Path) -> None:
    try:
        os.mknod(out / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        unavailable("creating a device node needs CAP_MKNOD (CI runs as root and has it)")
    report = collect(out, dest)
    assert report.skipped == (SkippedEntry("null", "character device"),)


# ---- limits ------------------------------------------------------------------------------------


def test_total_bytes_limit_rejects_everything(out: Path, dest: Path) -> None:
    (out / "a.bin").write_bytes(b"x" * 600)
    (out / "b.bin").write_bytes(b"x" * 600)
    with pytest.raises(OutputRejected, match=r"'b\.bin'.*larger than 1000 bytes"):
        collect(out, dest, max_bytes=1000)
    assert_nothing_left(dest)


def test_total_bytes_exactly_at_the_limit_is_fine(out: Path, dest: Path) -> None:
    (out / "a.bin").write_bytes(b"x" * 1000)
    assert collect(out, dest, max_bytes=1000).total_bytes == 1000


def test_sparse_huge_file_is_rejected_without_reading_it(out: Path, dest: Path) -> None:
    with open(out / "huge.bin", "wb") as sparse:
        sparse.truncate(1024**4)  # 1 TiB of nothing
    with pytest.raises(OutputRejected, match=r"huge\.bin"):
        collect(out, dest)
    assert_nothing_left(dest)


def test_file_count_limit_counts_skipped_entries_too(out: Path, dest: Path) -> None:
    for n in range(3):
        (out / f"f{n}").write_text("x")
    (out / "link").symlink_to("f0")
    assert len(collect(out, dest, max_files=4).files) == 3
    with pytest.raises(OutputRejected, match="more than 3 entries"):
        collect(out, dest.with_name("again"), max_files=3)
    assert_nothing_left(dest.with_name("again"))


def test_depth_limit(out: Path, dest: Path) -> None:
    deep = out / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "d.txt").write_text("x")
    assert [f.path for f in collect(out, dest, max_depth=4).files] == ["a/b/c/d.txt"]
    with pytest.raises(OutputRejected, match=r"'a/b/c/d\.txt'.*4 levels deep, the limit is 3"):
        collect(out, dest.with_name("again"), max_depth=3)


def test_overlong_path_is_rejected(out: Path, dest: Path) -> None:
    folder = out
    while len(str(folder.relative_to(out)).encode()) <= MAX_PATH_BYTES:
        folder = folder / ("d" * 250)
    folder.mkdir(parents=True)
    (folder / "x").write_text("x")
    with pytest.raises(OutputRejected, match=f"longer than {MAX_PATH_BYTES} bytes"):
        collect(out, dest, max_depth=100)
    assert_nothing_left(dest)


# ---- names -------------------------------------------------------------------------------------

BAD_NAMES = {
    "control character": "a\x01b",
    "newline": "two\nlines",
    "right-to-left override": "txt.\u202eexe",
    "backslash": "a\\b",
    "git folder": ".git",
    "git folder, other case": ".GiT",
    "gitignore": ".gitignore",
    "gitattributes": ".gitattributes",
    "option-like": "-rf",
    "trailing dot": "result.",
    "trailing space": "result ",
    "windows device": "CON.txt",
    "colon": "a:b",
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_names_that_git_or_filesystems_mishandle_are_refused(
    out: Path, dest: Path, name: str
) -> None:
    (out / name).write_text("x")
    with pytest.raises(OutputRejected, match="refused: the name"):
        collect(out, dest)
    assert_nothing_left(dest)


def test_non_utf8_name_is_refused(out: Path, dest: Path) -> None:
    os.close(os.open(os.fsencode(out) + b"/latin1-\xe9.txt", os.O_CREAT | os.O_WRONLY, 0o644))
    with pytest.raises(OutputRejected, match="not valid UTF-8"):
        collect(out, dest)


def test_a_refused_name_inside_a_folder_is_named_in_full(out: Path, dest: Path) -> None:
    (out / "plots" / ".git" / "hooks").mkdir(parents=True)
    (out / "plots" / ".git" / "hooks" / "post-checkout").write_text("#!/bin/sh\n")
    with pytest.raises(OutputRejected, match=r"'plots/\.git' refused: the name is a name git"):
        collect(out, dest)


def test_names_that_collide_on_case_insensitive_filesystems_are_refused(
    out: Path, dest: Path
) -> None:
    (out / "Result.csv").write_text("x")
    (out / "result.csv").write_text("y")
    with pytest.raises(OutputRejected, match="only in case"):
        collect(out, dest)


def test_names_that_collide_after_unicode_normalisation_are_refused(out: Path, dest: Path) -> None:
    (out / unicodedata.normalize("NFC", "café")).write_text("x")
    (out / unicodedata.normalize("NFD", "café")).write_text("y")
    with pytest.raises(OutputRejected, match="Unicode normalisation"):
        collect(out, dest)


def test_names_over_255_bytes_are_refused() -> None:
    # Linux filesystems cannot even hold one; others (and tar, zip) may.
    assert name_problem("n" * 256) == "is longer than 255 bytes"
    assert name_problem("é" * 128) == "is longer than 255 bytes"


@pytest.mark.parametrize(
    "name", ["summary.csv", "résumé.txt", ".hidden", "a b.txt", "x" * 255, "v1.2-final", "日本"]
)
def test_ordinary_names_pass(name: str) -> None:
    assert name_problem(name) is None


# ---- made by real containers -------------------------------------------------------------------


@pytest.fixture
def container_spec(tmp_path: Path, test_image: str) -> ContainerSpec:
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    output = tmp_path / "container-output"
    output.mkdir()
    return ContainerSpec(
        task_id="hostile",
        site=f"test-outputs-{RUN_ID}",
        image=test_image,
        command=None,
        environment={},
        config_file=config,
        input_dir=None,
        output_dir=output,
        memory_bytes=64 * 1024**2,
        cpus=0.5,
        pids=32,
    )


def run_script(runtime: DockerRuntime, spec: ContainerSpec, script: str) -> str:
    image = runtime.ensure_image(spec.image, policy="never")
    ref = runtime.start(replace(spec, command=("sh", "-c", f"cd /ptm/output && {script}")), image)
    outcome = runtime.wait(ref, timeout_s=60)
    assert outcome.exit_code == 0, outcome.log.decode()
    return outcome.log.decode()


def test_hostile_entries_made_in_a_container_are_skipped(
    docker_runtime: DockerRuntime, container_spec: ContainerSpec, dest: Path
) -> None:
    script = (
        "echo ok > ok.txt; mkdir -p sub/deeper; echo deep > sub/deeper/x.txt; "
        "ln -s /etc/passwd passwd; ln -s / root; ln -s ../.. escape; "
        "echo shared > shared.txt; ln shared.txt again.txt; mkfifo pipe; "
        "mknod null c 1 3 2>/dev/null || echo mknod refused"
    )
    log = run_script(docker_runtime, container_spec, script)
    assert log == "mknod refused\n"  # no CAP_MKNOD in the sandbox
    report = collect(container_spec.output_dir, dest)
    assert report.files == (
        CollectedFile("ok.txt", 3, sha(b"ok\n")),
        CollectedFile("sub/deeper/x.txt", 5, sha(b"deep\n")),
    )
    assert dict(report.skipped) == {
        "again.txt": "hard link (one of 2 names of a file)",
        "escape": "symbolic link, not followed",
        "passwd": "symbolic link, not followed",
        "pipe": "named pipe (fifo)",
        "root": "symbolic link, not followed",
        "shared.txt": "hard link (one of 2 names of a file)",
    }
    assert tree(dest) == {"ok.txt": b"ok\n", "sub/deeper/x.txt": b"deep\n"}


def test_too_much_output_from_a_container_is_refused_whole(
    docker_runtime: DockerRuntime, container_spec: ContainerSpec, dest: Path
) -> None:
    run_script(
        docker_runtime, container_spec, "echo fine > a.txt; dd if=/dev/zero of=big bs=1024 count=64"
    )
    with pytest.raises(OutputRejected, match=r"'big'.*larger than 32768 bytes"):
        collect(container_spec.output_dir, dest, max_bytes=32 * 1024)
    assert_nothing_left(dest)


@pytest.mark.parametrize(
    ("script", "refusal"),
    [
        ("mkdir -p .git/hooks && echo evil > .git/hooks/post-checkout", "'.git' refused"),
        ("echo x > ./-rf", "'-rf' refused: the name starts with '-'"),
        ("mkdir a && echo x > a/result.txt && echo y > a/RESULT.txt", "'a/result.txt' refused"),
        ("echo x > \"$(printf 'bell\\007')\"", r"'bell\x07' refused"),
    ],
    ids=["git folder", "option", "case collision", "control character"],
)
def test_refused_names_from_a_container_refuse_the_whole_output(
    docker_runtime: DockerRuntime,
    container_spec: ContainerSpec,
    dest: Path,
    script: str,
    refusal: str,
) -> None:
    run_script(docker_runtime, container_spec, f"echo fine > fine.txt; {script}")
    with pytest.raises(OutputRejected) as refused:
        collect(container_spec.output_dir, dest)
    assert refusal in str(refused.value)
    assert_nothing_left(dest)
