"""Memory bounded by caps, not by input: ptm's own peak RSS, measured in a process of its own
(``VmHWM``; ``ru_maxrss`` would count the spawning parent's too), while it reads a crafted
registry with files as big as the caps allow (or bigger), against the same command on a
registry of small files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import crafted
from tests.agent_support import remote_status, write_site_config
from tests.crafted import FILE, TREE
from tests.fixtures_git import git
from tests.test_status_cmd import add_task, status_yaml

SITE = "evil"
MIB = 1024**2
MEASURE = """\
import json, re, sys
from ptm.main import main
code = main(sys.argv[2:])
status = open("/proc/self/status").read()
with open(sys.argv[1], "w") as out:
    json.dump([code, int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))], out)
"""


def measured(folder: Path, *args: str) -> tuple[int, str, float]:
    """Run ``ptm ARGS`` in a process of its own: its exit code, what it printed, its peak RSS
    in MiB."""
    out = folder / "peak.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(out), *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    code, kib = json.loads(out.read_text())
    return code, done.stdout + done.stderr, float(kib) / 1024


def peak_mib(folder: Path, *args: str) -> float:
    code, said, mib = measured(folder, *args)
    assert code == 0, said
    return mib


def site_tree(registry: Path, files: dict[str, str]) -> str:
    """``results/<task>/<site>/`` folders from ``{"t1": {status.yaml oid}, …}``."""
    tasks = [
        (TREE, task.encode(), crafted.tree(registry, [(TREE, SITE.encode(), folder)]))
        for task, folder in files.items()
    ]
    return crafted.tree(registry, [(TREE, b"results", crafted.tree(registry, tasks))])


def put_result(registry: Path, output_oid: str, huge_status: str | None = None) -> None:
    """``results/<site>``: a completed result of t1 whose one output is ``output_oid``, and
    with ``huge_status`` a task ``huge`` whose status.yaml is that blob."""
    status = crafted.blob(registry, status_yaml("t1", SITE, "completed", exit_code=0))
    output = crafted.tree(registry, [(FILE, b"data.bin", output_oid)])
    folders = {
        "t1": crafted.tree(registry, [(FILE, b"status.yaml", status), (TREE, b"output", output)])
    }
    if huge_status is not None:
        folders["huge"] = crafted.tree(registry, [(FILE, b"status.yaml", huge_status)])
    sha = crafted.commit(registry, site_tree(registry, folders), [], "results")
    subprocess.run(
        ["git", "update-ref", f"refs/heads/results/{SITE}", sha], cwd=registry, check=True
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def test_collecting_an_output_as_big_as_the_cap_allows_never_holds_it_whole(
    bare_registry: Path, registry_clone: Path, tmp_path: Path
) -> None:
    add_task(registry_clone, "t1", (SITE,))
    size = 200 * MIB  # under the researchers' cap of 256 MiB a file
    where = ["--registry", str(bare_registry)]

    put_result(bare_registry, crafted.blob(bare_registry, b"x"))
    floor = peak_mib(tmp_path, "results", "t1", "--out", str(tmp_path / "small"), *where)
    put_result(bare_registry, crafted.big_blob(bare_registry, size, fill=b"x"))
    found = peak_mib(tmp_path, "results", "t1", "--out", str(tmp_path / "big"), *where)

    written = tmp_path / "big" / SITE / "output" / "data.bin"
    assert written.stat().st_size == size
    assert sha256_of(written) == hashlib.sha256(b"x" * size).hexdigest()
    assert found - floor < 64, f"collecting {size} bytes grew the peak by {found - floor:.0f} MiB"


def put_huge_task(registry: Path, big: str) -> None:
    """On the tasks branch of the bare ``registry``: a task ``huge`` whose task.yaml is ``big``."""
    folder = crafted.tree(registry, [(FILE, b"task.yaml", big)])
    tasks = crafted.replace_entries(registry, "main:tasks", b"huge", [(TREE, b"huge", folder)])
    root = crafted.replace_entries(registry, "main^{tree}", b"tasks", [(TREE, b"tasks", tasks)])
    parent = subprocess.run(
        ["git", "rev-parse", "main"], cwd=registry, capture_output=True, text=True, check=True
    ).stdout.strip()
    sha = crafted.commit(registry, root, [parent], "a huge task")
    subprocess.run(["git", "update-ref", "refs/heads/main", sha], cwd=registry, check=True)


READERS = {
    "overview": ("status",),
    "detail": ("status", "huge"),
    "audit": ("audit",),
}


def test_status_and_audit_refuse_huge_documents_unread(
    bare_registry: Path, registry_clone: Path, tmp_path: Path
) -> None:
    add_task(registry_clone, "t1", (SITE,))
    put_result(bare_registry, crafted.blob(bare_registry, b"x"))
    where = ("--registry", str(bare_registry))
    floors = {name: measured(tmp_path, *args, *where)[2] for name, args in READERS.items()}

    big = crafted.big_blob(bare_registry, 300 * MIB, fill=b"#")  # one long YAML comment
    put_huge_task(bare_registry, big)
    put_result(bare_registry, crafted.blob(bare_registry, b"x"), huge_status=big)
    found = {name: measured(tmp_path, *args, *where) for name, args in READERS.items()}

    task_refused = f"tasks/huge/task.yaml: is {300 * MIB} bytes, at most"
    status_refused = f"results/huge/{SITE}/status.yaml: is {300 * MIB} bytes, at most"
    assert found["overview"][0] == 0  # its table shortens the reason
    assert f"results/huge/{SITE}/status.yaml: is {300 * MIB}" in found["overview"][1]
    assert found["detail"][0] == 0
    assert task_refused in found["detail"][1] and status_refused in found["detail"][1]
    assert found["audit"][0] == 1  # a finding: the task cannot be read
    assert task_refused in found["audit"][1] and "[max-bytes]" in found["audit"][1]
    for name, (_, _, mib) in found.items():
        assert mib - floors[name] < 64, f"{name} grew the peak by {mib - floors[name]:.0f} MiB"


def push_task_with_file(clone: Path, task_id: str, image: str, size: int) -> None:
    """A task for hospital-a whose one input file holds ``size`` bytes; it checks the size."""
    folder = clone / "tasks" / task_id
    (folder / "files").mkdir(parents=True)
    with (folder / "files" / "data.bin").open("wb") as stream:
        for _ in range(size // MIB):
            stream.write(b"y" * MIB)
        stream.write(b"y" * (size % MIB))
    check = f"test $(wc -c < /ptm/input/data.bin) -eq {size}"
    (folder / "task.yaml").write_text(
        f"ptm: 1\nimage: {image}\nsites: [hospital-a]\ncommand: ['sh', '-c', '{check}']\n"
    )
    for args in (["add", "tasks"], ["commit", "-q", "-m", task_id], ["push", "-q"]):
        subprocess.run(["git", *args], cwd=clone, check=True)


@pytest.mark.docker
def test_the_agent_writes_task_files_as_big_as_the_cap_allows_a_chunk_at_a_time(
    bare_registry: Path, registry_clone: Path, tmp_path: Path, test_image: str
) -> None:
    config = str(write_site_config(tmp_path, "hospital-a", bare_registry))
    push_task_with_file(registry_clone, "small", test_image, 1)
    floor = peak_mib(tmp_path, "agent", "once", "--config", config)
    size = 48 * MIB  # a task's files may hold 50 MiB in all
    push_task_with_file(registry_clone, "big", test_image, size)
    found = peak_mib(tmp_path, "agent", "once", "--config", config)

    for task_id in ("small", "big"):  # the container saw the whole file
        assert (remote_status(bare_registry, task_id) or {}).get("state") == "completed"
    grown = found - floor  # never the file whole: well under its size, and the 64 MiB goal
    assert grown < size / MIB / 2, f"{size} bytes of task files grew the peak by {grown:.0f} MiB"


def test_a_huge_commit_message_on_the_sites_branch_is_never_read(
    bare_registry: Path, tmp_path: Path
) -> None:
    """The lease check reads the tip's message: one of 100 MiB (anyone who can push to the
    branch may write it) is judged by its size first, and neither read nor obeyed."""
    config = str(write_site_config(tmp_path, "hospital-a", bare_registry))
    floor = peak_mib(tmp_path, "agent", "once", "--config", config)
    message = tmp_path / "message.txt"
    with message.open("wb") as stream:
        stream.write(b"huge\n\n")
        for _ in range(100):
            stream.write(b"Agent: someone-else\n" * (MIB // 20))
    ref = "refs/heads/results/hospital-a"
    tip = git(bare_registry, "rev-parse", ref)
    tree = git(bare_registry, "rev-parse", f"{tip}^{{tree}}")
    sha = git(bare_registry, "commit-tree", tree, "-p", tip, "-F", str(message))
    git(bare_registry, "update-ref", ref, sha)

    found = peak_mib(tmp_path, "agent", "once", "--config", config)
    grown = found - floor  # the agent went on: another agent's lease was not believed
    assert grown < 32, f"a 100 MiB commit message grew the agent's peak by {grown:.0f} MiB"
