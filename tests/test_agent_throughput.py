"""Throughput: a run's end hands its slot to the next queued task at once (no cycle needed),
the tasks that wait for a slot are recorded together (a commit each), each task is started
once, and ``poll_interval`` takes fractions down to 0.5 s."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptm.errors import PtmError
from ptm.siteconfig import load_site_config
from tests.agent_support import Researcher, site_agent, states_in_history, write_site_config
from tests.crafted import FILE, TREE, big_blob, commit, tree
from tests.fixtures_git import git

pytestmark = pytest.mark.docker


def test_a_freed_slot_starts_the_next_queued_task_without_a_cycle(
    bare_registry: Path, tmp_path: Path, test_image: str
) -> None:
    researcher = Researcher(bare_registry, tmp_path / "researcher")
    for n in range(4):
        researcher.submit(f"q-{n}", "true")
    agent = site_agent(tmp_path, "hospital-a", bare_registry, limits={"max_parallel": 1})
    report = agent.cycle()  # one cycle only: it accepts all four and starts the first
    assert report.new_tasks == 4 and report.started == 1
    deadline = time.monotonic() + 90
    records = {}
    while time.monotonic() < deadline:
        records = agent.ledger.records([f"q-{n}" for n in range(4)])
        if len(records) == 4 and all(r.state == "completed" for r in records.values()):
            break
        time.sleep(0.2)
    assert {t: r.state for t, r in records.items()} == {f"q-{n}": "completed" for n in range(4)}
    agent.publish()
    for n in range(4):  # pull: never with the image present: no 'pulling' is recorded
        assert states_in_history(bare_registry, f"q-{n}") == ["accepted", "running", "completed"]
    # The three that waited for the slot were recorded together, still a commit each.
    accepted = git(
        bare_registry,
        "log",
        "--format=%x00%s",
        "--name-only",
        "--grep=accepted",
        "results/hospital-a",
    )
    changes = [entry.split("\n", 1) for entry in accepted.split("\0") if entry]
    assert sorted(subject for subject, _ in changes) == [
        f"q-{n}: accepted at hospital-a" for n in range(4)
    ]
    for subject, names in changes:
        task = subject.split(":")[0]
        assert names.split() == [f"results/{task}/hospital-a/status.yaml"]


def test_poll_interval_takes_fractions_down_to_half_a_second(tmp_path: Path) -> None:
    config = load_site_config(write_site_config(tmp_path, "a", tmp_path, poll_interval=0.5))
    assert config.poll_interval == 0.5
    with pytest.raises(PtmError, match="poll_interval"):
        load_site_config(write_site_config(tmp_path, "b", tmp_path, poll_interval=0.4))


def test_an_adopted_status_blob_over_its_cap_is_never_read_into_memory(
    bare_registry: Path, tmp_path: Path
) -> None:
    size = 128 * 1024 * 1024
    status = big_blob(bare_registry, size)
    site_tree = tree(bare_registry, [(FILE, b"status.yaml", status)])
    task_tree = tree(bare_registry, [(TREE, b"hospital-a", site_tree)])
    results = tree(bare_registry, [(TREE, b"big", task_tree)])
    root = tree(bare_registry, [(TREE, b"results", results)])
    sha = commit(bare_registry, root, [])
    git(bare_registry, "update-ref", "refs/heads/results/hospital-a", sha)
    done = subprocess.run(
        [sys.executable, "-c", READ_ADOPTED, str(bare_registry), str(tmp_path / "ledger.git")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert after - before < 64 * 1024 * 1024, f"peak memory grew by {after - before} bytes"


# In a process of its own, by VmHWM: this test process's own peak (ru_maxrss) may already be
# higher than anything the reading could add, and a child's ru_maxrss starts from it.
READ_ADOPTED = """
import sys
from pathlib import Path
from ptm.ledger import Ledger
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
ledger = Ledger(Path(sys.argv[2]), url=sys.argv[1], site="hospital-a", ssh_key=None, sign_key=None)
ledger.ensure()  # adopts the registry's branch, its records unproven
before = peak()
assert ledger.status_of("big") is None  # over MAX_STATUS_BYTES: unreadable, not read
assert ledger.all_records() == []
print(before, peak())
"""
