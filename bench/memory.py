"""Peak memory of ptm's readers on a registry holding a 300 MiB blob, against an idle agent's.

    python -m bench.memory [--mib 300] [--output-mib 200] [--message-mib 32] [--show]

Builds bare local registries. The clean one: a task for another site, and that site's results
branch with a completed result. The hostile one: the same, plus one blob of ``--mib`` MiB (a
single YAML comment, so only a size check stops a reader) in every place a hostile writer could
put it: a task's ``task.yaml``, a file in a task's ``files/``, a ``cancel.yaml``, a ``sites/``
document and the tasks branch's root; on the other site's results branch a ``status.yaml``, an
output file and the branch's root; and a commit message of ``--message-mib`` at the tip of both
branches. Besides, files as big as the caps allow: a task with 48 MiB of input files (the agent
accepts and runs it: this needs a Docker engine and the image ptm-test/busybox:latest) and an
output file of ``--output-mib`` (``ptm results`` collects it).

Each command runs in a process of its own, which reports its own peak RSS (``VmHWM``: a
child's ``ru_maxrss`` would count its parent's at the moment it was spawned). The
largest git process is shown apart, measured by GNU time around each git (a git holding a blob
is git's memory; what matters is that ptm never has git stream a blob to it, which would show in
ptm's figure; with a local registry a fetch's figure includes the serving side). The floor is an
idle ``ptm agent once`` on a registry without tasks; the goal is each command under 64 MiB above
it. Each command's figure on the clean registry is printed beside it; ``--show`` prints what
each command said.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ptm.registry import init_registry
from tests.crafted import FILE, TREE, big_blob, blob, commit, read_tree_entries, tree

SITE = "bench-site"
OTHER = "evil"  # the site whose results branch the hostile registry fills
IMAGE = "ptm-test/busybox:latest"
GOAL_MIB = 64
TASK_FILES_MIB = 48  # a task's files may hold 50 MiB in all: this task is accepted and run
MEASURE = """\
import json, re, sys
from ptm.main import main
code = main(sys.argv[2:])
status = open("/proc/self/status").read()
with open(sys.argv[1], "w") as out:
    json.dump([code, int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))], out)
"""


@dataclass(frozen=True)
class Peak:
    """One command's exit code and peak RSS in MiB: its own and its largest git child's."""

    code: int
    own_mib: float
    git_mib: float
    git_command: str
    seconds: float
    said: tuple[str, ...]  # what it printed


def task_text(site: str) -> bytes:
    return f"ptm: 1\nimage: {IMAGE}\nsites: [{site}]\ncommand: ['true']\n".encode()


def status_text(task: str, site: str, task_commit: str, outputs: str = "[]") -> bytes:
    return (
        f"ptm: 1\ntask: {task}\nsite: {site}\nstate: completed\nreason: null\n"
        f"task_commit: {task_commit}\nimage: {IMAGE}\nimage_id: sha256:{'0' * 64}\n"
        f"exit_code: 0\nreceived_at: 2026-12-01T10:00:00Z\nstarted_at: 2026-12-01T10:00:01Z\n"
        f"finished_at: 2026-12-01T10:00:02Z\noutputs: {outputs}\nagent: ptm 0.1.0\n"
    ).encode()


def folder_of(repo: Path, files: dict[str, str]) -> str:
    """A tree from ``{"a/b": blob oid}``: nested folders, entries in git's order."""
    here = [(FILE, name.encode(), oid) for name, oid in files.items() if "/" not in name]
    subfolders: dict[str, dict[str, str]] = {}
    for path, oid in files.items():
        if "/" in path:
            first, rest = path.split("/", 1)
            subfolders.setdefault(first, {})[rest] = oid
    here += [(TREE, name.encode(), folder_of(repo, sub)) for name, sub in subfolders.items()]
    return tree(repo, here)


def build(
    folder: Path, name: str, mib: int | None, output_mib: int = 0, message_mib: int = 0
) -> Path:
    """A bare registry; with ``mib``, a blob that big sits everywhere a writer may put it, and
    the other site's result has an output of ``output_mib`` besides."""
    registry = folder / name
    init_registry(registry, bare=True)
    base = subprocess.run(
        ["git", "rev-parse", "main"], cwd=registry, capture_output=True, text=True, check=True
    ).stdout.strip()
    kept = [e for e in read_tree_entries(registry, "main^{tree}") if e[1] != b"tasks"]
    tasks = {"ok/task.yaml": blob(registry, task_text(OTHER))}
    big = big_blob(registry, mib * 1024**2, fill=b"#") if mib else ""
    if big:
        tasks |= {
            "at-cap/task.yaml": blob(registry, task_text(SITE)),
            "at-cap/files/data.bin": big_blob(registry, TASK_FILES_MIB * 1024**2, fill=b"y"),
            "huge-doc/task.yaml": big,
            "huge-files/task.yaml": blob(registry, task_text(SITE)),
            "huge-files/files/big.bin": big,
            "huge-cancel/task.yaml": blob(registry, task_text(SITE)),
            "huge-cancel/cancel.yaml": big,
        }
        kept = [e for e in kept if e[1] != b"sites"]
        kept += [(FILE, b"big.bin", big), (TREE, b"sites", folder_of(registry, {"x.yaml": big}))]
    root = tree(registry, [*kept, (TREE, b"tasks", folder_of(registry, tasks))])
    main = commit_with(registry, root, [base], message_mib if mib else None)
    git_update(registry, "refs/heads/main", main)
    results = {f"results/ok/{OTHER}/status.yaml": blob(registry, status_text("ok", OTHER, main))}
    if big:
        listed = ", ".join(
            f"{{path: output/{file}, bytes: {size * 1024**2}, sha256: '{'0' * 64}'}}"
            for file, size in (("big.bin", mib), ("under-cap.bin", output_mib))
        )
        status = status_text("ok", OTHER, main, f"[{listed}]")
        results |= {
            f"results/ok/{OTHER}/status.yaml": blob(registry, status),
            f"results/ok/{OTHER}/output/big.bin": big,
            f"results/ok/{OTHER}/output/under-cap.bin": big_blob(
                registry, output_mib * 1024**2, fill=b"x"
            ),
            f"results/huge-doc/{OTHER}/status.yaml": big,
            "big.bin": big,
        }
    branch = commit_with(registry, folder_of(registry, results), [], message_mib if mib else None)
    git_update(registry, f"refs/heads/results/{OTHER}", branch)
    return registry


def commit_with(registry: Path, tree_oid: str, parents: list[str], mib: int | None) -> str:
    """A commit of ``tree_oid``; with ``mib``, its message is that big (lease lines in it)."""
    if not mib:
        return commit(registry, tree_oid, parents, "small")
    message = registry / "message.txt"
    line = b"Agent: someone-else\n"
    with message.open("wb") as stream:
        stream.write(b"a huge message\n\n")
        for _ in range(mib):
            stream.write(line * (1024**2 // len(line)))
    args = ["git", "commit-tree", tree_oid, "-F", str(message)]
    for parent in parents:
        args += ["-p", parent]
    done = subprocess.run(args, cwd=registry, capture_output=True, text=True, check=True)
    message.unlink()
    return done.stdout.strip()


def git_update(registry: Path, ref: str, sha: str) -> None:
    subprocess.run(["git", "update-ref", ref, sha], cwd=registry, check=True)


def site_config(folder: Path, registry: Path, site: str, label: str) -> Path:
    """Site ``OTHER`` allows no image: its agent judges (and rejects) and runs nothing."""
    images = "ptm-test/.*:.*" if site == SITE else "nothing/.*:.*"
    document = {
        "ptm": 1,
        "site": site,
        "registry": {"url": str(registry)},
        "workdir": str(folder / f"work-{label}"),
        "policy": {"allowed_images": [images], "require_signed_tasks": False},
        "runtime": {"pull": "never"},
    }
    path = folder / f"site-{label}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def git_wrapper(folder: Path) -> Path | None:
    """A folder whose ``git`` runs the real one under GNU time, which appends each git
    process's own peak RSS and command line to ``git-peaks.log``; None without /usr/bin/time.

    A child's ``ru_maxrss`` counts the memory of the process that spawned it (the kernel keeps
    the larger figure across exec), so git's own figure must come from a small parent."""
    real = shutil.which("git")
    if real is None or not Path("/usr/bin/time").is_file():
        return None
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "git"
    log = folder / "git-peaks.log"
    script.write_text(f'#!/bin/sh\nexec /usr/bin/time -a -o "{log}" -f "%M %C" "{real}" "$@"\n')
    script.chmod(0o755)
    return bin_dir


def git_peak(folder: Path) -> tuple[float, str]:
    """The largest git process since the last call (MiB, its subcommand); the log is emptied."""
    log = folder / "git-peaks.log"
    if not log.is_file():
        return 0.0, "-"
    found = [
        (int(kib) / 1024, command)
        for kib, _, command in (line.partition(" ") for line in log.read_text().splitlines())
        if kib.isdigit()
    ]
    log.unlink()
    if not found:
        return 0.0, "-"
    mib, command = max(found)
    words = command.split()[1:]
    while words and words[0].startswith("-"):  # git's own options: -c key=value, -C folder
        words = words[2:] if words[0] in ("-c", "-C") else words[1:]
    return mib, " ".join(["git", *words[:1]])


def peak(folder: Path, args: list[str]) -> Peak:
    """Run ``ptm ARGS`` in a process of its own: its own peak RSS, and its largest git child's."""
    out = folder / "peak.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache")}
    wrapper = git_wrapper(folder)
    if wrapper is not None:
        env["PATH"] = f"{wrapper}{os.pathsep}{env.get('PATH', '')}"
    began = time.perf_counter()
    said = subprocess.run(
        [sys.executable, "-c", MEASURE, str(out), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    ).stdout
    took = time.perf_counter() - began
    code, own = json.loads(out.read_text())
    git_mib, git_command = git_peak(folder)
    lines = said.decode("utf-8", "replace").splitlines()
    return Peak(code, own / 1024, git_mib, git_command, took, tuple(lines))


def commands(folder: Path, registry: Path, label: str) -> dict[str, list[str]]:
    """The commands measured, researchers' first: the agents push to the registry."""
    where = ["--registry", str(registry)]
    return {
        "ptm status (overview)": ["status", *where],
        "ptm status ok": ["status", "ok", *where],
        "ptm status huge-doc": ["status", "huge-doc", *where],
        "ptm results ok": ["results", "ok", "--out", str(folder / f"out-{label}"), *where],
        "ptm audit": ["audit", *where],
        "ptm agent once (a site the tasks target)": [
            *("agent", "once", "--config"),
            str(site_config(folder, registry, SITE, label)),
        ],
        f"ptm agent once (site {OTHER}, adopting its branch)": [
            *("agent", "once", "--config"),
            str(site_config(folder, registry, OTHER, f"{label}-{OTHER}")),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=300, help="size of the hostile blob in MiB")
    parser.add_argument(
        "--output-mib",
        type=int,
        default=200,
        help="an output file under the cap for collecting results (256 MiB a file)",
    )
    parser.add_argument(
        "--message-mib", type=int, default=32, help="the commit messages at the branches' tips"
    )
    parser.add_argument("--show", action="store_true", help="print what each command said")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ptm-bench-") as tmp:
        folder = Path(tmp)
        clean = build(folder, "clean.git", None)
        idle_config = site_config(folder, build(folder, "idle.git", None), SITE, "idle")
        hostile = build(folder, "hostile.git", args.mib, args.output_mib, args.message_mib)
        idle = peak(folder, ["agent", "once", "--config", str(idle_config)])
        print(report_line("idle ptm agent once (no tasks)", idle, None, idle))
        floors = {name: peak(folder, argv) for name, argv in commands(folder, clean, "c").items()}
        over = False
        for name, argv in commands(folder, hostile, "h").items():
            found = peak(folder, argv)
            over |= found.own_mib - idle.own_mib >= GOAL_MIB
            print(report_line(name, found, floors[name], idle))
            for line in found.said if args.show else ():
                print(f"    {ascii(line)[1:-1]}")
    print(
        f"a {args.mib} MiB blob everywhere, {args.message_mib} MiB commit messages, "
        f"{TASK_FILES_MIB} MiB of task files, a {args.output_mib} MiB output file; ptm's own "
        "peak RSS (VmHWM), git: the largest git process"
    )
    if over:
        raise SystemExit(1)


def report_line(name: str, found: Peak, floor: Peak | None, idle: Peak) -> str:
    git = f"git {found.git_mib:.0f} MiB ({found.git_command})"
    if floor is None:
        return f"{name:<48} {found.own_mib:.1f} MiB, the floor; {git}; {found.seconds:.1f} s"
    return (
        f"{name:<48} {found.own_mib - idle.own_mib:+6.1f} MiB above idle (goal < {GOAL_MIB} MiB),"
        f" clean registry {floor.own_mib - idle.own_mib:+.1f}; {git}; exit {found.code},"
        f" {found.seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
