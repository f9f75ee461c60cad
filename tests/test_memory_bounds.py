"""Memory bounded by caps, not by input: ptm's own peak RSS, measured in a process of its own
(``ru_maxrss``), while it reads a crafted registry with files as big as the caps allow."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests import crafted
from tests.crafted import FILE, TREE
from tests.test_status_cmd import add_task, status_yaml

SITE = "evil"
MIB = 1024**2
MEASURE = """\
import json, resource, sys
from ptm.main import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump([code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss], out)
"""


def peak_mib(folder: Path, *args: str) -> float:
    """Run ``ptm ARGS`` in a process of its own; its peak RSS in MiB (it must succeed)."""
    out = folder / "peak.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(out), *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    code, kib = json.loads(out.read_text())
    assert code == 0, done.stderr
    return float(kib) / 1024


def put_result(registry: Path, output_oid: str) -> None:
    """``results/<site>`` with a completed result of t1 whose one output is ``output_oid``."""
    status = crafted.blob(registry, status_yaml("t1", SITE, "completed", exit_code=0))
    output = crafted.tree(registry, [(FILE, b"data.bin", output_oid)])
    tree = crafted.tree(registry, [(FILE, b"status.yaml", status), (TREE, b"output", output)])
    for name in (SITE, "t1", "results"):
        tree = crafted.tree(registry, [(TREE, name.encode(), tree)])
    sha = crafted.commit(registry, tree, [], "results")
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
