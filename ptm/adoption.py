"""What a results branch already holds when the agent's journal starts: the status record of each
task (``status_blobs``), and, for a branch adopted from the registry by a fresh work folder,
which of those records no commit signed with the site key wrote (``adoption_unproven``): their
tasks are known, so never run again, but never acted on."""

from __future__ import annotations

from pathlib import Path

from ptm.gitrepo import GitRepo
from ptm.result_layout import RESULTS_DIR, STATUS_FILE


def status_blobs(repo: GitRepo, ref: str, site: str) -> dict[str, str]:
    """task id -> blob of ``results/<task>/<site>/status.yaml`` on ``ref`` (empty if no ref)."""
    if repo.rev_parse(ref) is None:
        return {}
    out = repo.run("ls-tree", "-r", "-z", "--full-tree", ref, "--", f"{RESULTS_DIR}/", strip=False)
    found = {}
    for record in out.split("\0"):
        meta, _, path = record.partition("\t")
        parts = path.split("/")
        if len(parts) == 4 and parts[2] == site and parts[3] == STATUS_FILE and meta:
            found[parts[1]] = meta.split(" ")[2]
    return found


def adoption_unproven(repo: GitRepo, tip: str, site: str, sign_key: Path | None) -> dict[str, str]:
    """Records on an adopted branch that no commit signed with the site key wrote."""
    blobs = status_blobs(repo, tip, site)
    if sign_key is None or not blobs:
        return blobs
    public = Path(f"{sign_key}.pub")
    if not public.is_file():
        return blobs
    signers = repo.path / "ptm-own-signer"
    key = " ".join(public.read_text(encoding="utf-8").split()[:2])
    signers.write_text(f'ptm-agent@{site} namespaces="git" {key}\n', encoding="utf-8")
    out = repo.run(
        "log",
        "--format=%x1e%H %G?",
        "--name-only",
        tip,
        "--",
        f"{RESULTS_DIR}/",
        config={"gpg.ssh.allowedSignersFile": str(signers)},
    )
    proven: set[str] = set()
    decided: set[str] = set()
    for chunk in out.split("\x1e")[1:]:
        header, _, names = chunk.partition("\n")
        good = header.endswith(" G")
        for name in names.splitlines():
            parts = name.split("/")
            is_status = len(parts) == 4 and parts[2] == site and parts[3] == STATUS_FILE
            if is_status and parts[1] not in decided:
                decided.add(parts[1])
                if good:
                    proven.add(parts[1])
    return {task: blob for task, blob in blobs.items() if task not in proven}
