"""The cost of encrypted results per MiB of output: sealing at the site (tar of the status, log
and outputs, then age to the submitter's and one extra SSH key) and unsealing where the
researcher collects (ciphertext checksum, age decryption, tar checks, per-file SHA-256, writing
the files), against copying the same outputs unencrypted.

    python bench/encryption.py [--sizes 1 16] [--files 4] [--repeat 3]

Each size is the total output in MiB, split over ``--files`` files of random bytes (random data
is the worst case for nothing: age does not compress). Prints the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ptm.encryption import load_private_key
from ptm.schema import dump_yaml
from ptm.sealed import SEALED_FILE, seal, unseal_folder
from ptm.siteconfig import SiteConfig
from ptm.status import StatusRecord

MIB = 1024**2
PRINCIPAL = "alice@uni.example"
HEADER = ("MiB", "seal ms", "seal ms/MiB", "unseal ms", "unseal ms/MiB", "plain ms/MiB", "+bytes")


def keygen(folder: Path, name: str, kind: str) -> Path:
    private = folder / name
    command = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(private)]
    subprocess.run([*command, *(["-b", "3072"] if kind == "rsa" else [])], check=True)
    return private


def public_line(private: Path) -> str:
    return " ".join(Path(f"{private}.pub").read_text().split()[:2])


def site(folder: Path, alice: Path, auditor: Path) -> SiteConfig:
    signers = folder / "allowed_signers"
    signers.write_text(f'{PRINCIPAL} namespaces="git" {public_line(alice)}\n')
    document = {
        "ptm": 1,
        "site": "bench-site",
        "registry": {"url": str(folder / "registry.git")},
        "policy": {"allowed_signers": str(signers), "encrypt_to": [public_line(auditor)]},
    }
    return SiteConfig.from_document(document, source="bench", base_dir=folder)


def make_outputs(folder: Path, total: int, files: int) -> StatusRecord:
    folder.mkdir()
    entries = []
    for index in range(files):
        data = os.urandom(total // files)
        (folder / f"part-{index}.bin").write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        entries.append({"path": f"output/part-{index}.bin", "bytes": len(data), "sha256": digest})
    return StatusRecord(
        task="bench",
        site="bench-site",
        state="completed",
        task_commit="0" * 40,
        received_at="2026-12-01T10:00:00Z",
        finished_at="2026-12-01T10:00:09Z",
        submitted_by=PRINCIPAL,
        exit_code=0,
        outputs=tuple(entries),
    )


def timed(action: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` runs of ``action``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(root: Path, config: SiteConfig, alice: Path, mib: int, files: int, repeat: int) -> str:
    work = root / f"size-{mib}"
    work.mkdir()
    outputs = work / "collected"
    record = make_outputs(outputs, mib * MIB, files)
    key = load_private_key(alice)
    sealed_path = work / "result.age"
    public = seal(record, config, b"log line\n", outputs, sealed_path)

    def reseal() -> None:
        again = work / "result-again.age"
        again.unlink(missing_ok=True)
        seal(record, config, b"log line\n", outputs, again)

    def unseal() -> None:
        folder = work / "site"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (folder / "status.yaml").write_text(dump_yaml(public.to_document()))
        shutil.copyfile(sealed_path, folder / SEALED_FILE)
        unseal_folder(folder, key)

    def plain_copy() -> None:
        target = work / "plain"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(outputs, target)
        for path in target.iterdir():
            hashlib.sha256(path.read_bytes()).hexdigest()

    sealing = timed(reseal, repeat)
    opening = timed(unseal, repeat)
    plain = timed(plain_copy, repeat)
    cells = (mib, sealing * 1000, sealing * 1000 / mib, opening * 1000, opening * 1000 / mib)
    cells += (plain * 1000 / mib, sealed_path.stat().st_size - mib * MIB)
    return "  ".join(
        f"{cell:>{len(h)}.{0 if i in (0, 6) else 1}f}"
        for i, (cell, h) in enumerate(zip(cells, HEADER, strict=True))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16], metavar="MIB")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ptm-bench-encryption-") as tmp:
        root = Path(tmp)
        alice, auditor = keygen(root, "alice", "ed25519"), keygen(root, "auditor", "rsa")
        config = site(root, alice, auditor)
        print(f"{args.files} files of random bytes; keys: ssh-ed25519 (submitter), ssh-rsa 3072")
        print("  ".join(HEADER))
        for mib in args.sizes:
            print(measure(root, config, alice, mib, args.files, args.repeat))


if __name__ == "__main__":
    main()
