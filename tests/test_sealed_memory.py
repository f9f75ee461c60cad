"""Sealing and unsealing stream: a large result costs disk, not memory. Each side runs in a
process of its own (the peak RSS of this test process says nothing), once with a large output
and once with a tiny one; the difference is what the output's size cost in memory."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from ptm.schema import dump_yaml
from ptm.sealed import SEALED_FILE, file_digest
from ptm.status import StatusRecord
from tests.agent_support import write_site_config

BIG = 128 * 1024 * 1024
MEMORY_BOUND = 40 * 1024 * 1024  # it grew by 2-3x BIG when the result went through memory

# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child would start from the
# peak of this test process at the fork.
PEAK = """
def peak_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""

SEAL = (
    PEAK
    + """
import sys
from pathlib import Path
from ptm.sealed import seal
from ptm.siteconfig import load_site_config
from ptm.status import load_status
config, status, outputs, target = map(Path, sys.argv[1:])
seal(load_status(status), load_site_config(config), b"log\\n", outputs, target)
print(peak_bytes())
"""
)

UNSEAL = (
    PEAK
    + """
import sys
from pathlib import Path
from ptm.encryption import load_private_key
from ptm.sealed import unseal_folder
folder, key = map(Path, sys.argv[1:])
print(len(unseal_folder(folder, load_private_key(key))))
print(peak_bytes())
"""
)


def peak(script: str, *args: Path) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return [int(line) for line in done.stdout.split()]


def output_file(folder: Path, size: int) -> tuple[Path, dict[str, object]]:
    """An outputs folder holding one file of ``size`` bytes, and its status entry."""
    outputs = folder / "outputs"
    outputs.mkdir(parents=True)
    digest = hashlib.sha256()
    with (outputs / "table.csv").open("wb") as stream:
        chunk = b"0123456789abcdef" * 65536
        for start in range(0, size, len(chunk)):
            part = chunk[: size - start]
            stream.write(part)
            digest.update(part)
    return outputs, {"path": "output/table.csv", "bytes": size, "sha256": digest.hexdigest()}


def seal_and_unseal(tmp_path: Path, size: int) -> tuple[int, int]:
    """(peak RSS of sealing, of unsealing) a result with one output of ``size`` bytes."""
    tmp_path.mkdir()
    key = tmp_path / "alice"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    signers = tmp_path / "allowed_signers"
    signers.write_text(f'alice@uni.example namespaces="git" {public}\n')
    config = write_site_config(
        tmp_path, "hospital-a", tmp_path / "registry.git", policy={"allowed_signers": str(signers)}
    )
    outputs, entry = output_file(tmp_path, size)
    record = StatusRecord(
        task="t1",
        site="hospital-a",
        state="completed",
        task_commit="3f2c" + "0" * 36,
        received_at="2026-12-01T10:00:00Z",
        finished_at="2026-12-01T10:00:09Z",
        submitted_by="alice@uni.example",
        exit_code=0,
        outputs=(entry,),
    )
    status = tmp_path / "status-in.yaml"
    status.write_text(dump_yaml(record.to_document()))
    folder = tmp_path / "collected" / "hospital-a"
    folder.mkdir(parents=True)
    (sealing,) = peak(SEAL, config, status, outputs, folder / SEALED_FILE)
    # What `ptm results` collects: the public status the site published beside result.age.
    public_status = folder / "status.yaml"
    sealed_size = (folder / SEALED_FILE).stat().st_size
    _, sealed_hash = file_digest(folder / SEALED_FILE)
    shown = record.to_document() | {
        "outputs": [{"path": SEALED_FILE, "bytes": sealed_size, "sha256": sealed_hash}],
        "encrypted_to": [],
    }
    public_status.write_text(dump_yaml(shown))
    files, unsealing = peak(UNSEAL, folder, key)
    assert files == 3  # log.txt, output/table.csv, status.yaml
    assert (folder / "output" / "table.csv").stat().st_size == size
    return sealing, unsealing


def test_sealing_and_unsealing_a_large_result_keep_memory_flat(tmp_path: Path) -> None:
    small = seal_and_unseal(tmp_path / "small", 1024)
    large = seal_and_unseal(tmp_path / "large", BIG)
    grown = [big - little for big, little in zip(large, small, strict=True)]
    assert grown[0] < MEMORY_BOUND, f"sealing {BIG >> 20} MiB grew the peak by {grown[0] >> 20} MiB"
    assert grown[1] < MEMORY_BOUND, f"unsealing grew the peak by {grown[1] >> 20} MiB"
