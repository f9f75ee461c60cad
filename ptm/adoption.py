"""What a results branch already holds when the agent's journal starts: the status record of each
task (``status_blobs``), and, for a branch adopted from the registry by a fresh work folder,
which of those records no commit signed with the site key wrote (``adoption_unproven``): their
tasks are known, so never run again, but never acted on."""

from __future__ import annotations

from pathlib import Path

from ptm.errors import RegistryError
from ptm.gitrepo import GitRepo
from ptm.result_layout import RESULTS_DIR, STATUS_FILE
from ptm.tree_entries import FILE_MODES, TREE_MODE, RawEntry
from ptm.treecheck import TreeRefused, read_folder, read_folders

MAX_RESULTS_LISTING = 16 * 1024**2  # the results/ folder's own listing (~180,000 tasks)
MAX_TASK_LISTINGS = 64 * 1024**2  # the task folders' and site folders' listings, in all
MAX_PATH_LINE = 4096  # a line of git log's output that could name a status file


def status_blobs(repo: GitRepo, ref: str, site: str) -> dict[str, str]:
    """task id -> blob of ``results/<task>/<site>/status.yaml`` on ``ref`` (empty if no ref).

    Folder by folder, each listing's size checked before it is read (an adopted branch is
    anyone's: a results folder of millions of entries is refused, not listed into memory);
    nothing below a site's folder is read. RegistryError when the listings are over the caps.
    """
    if repo.rev_parse(ref) is None:
        return {}
    root = _read(repo, repo.run("rev-parse", f"{ref}^{{tree}}"), ref, 2**20)
    results = _folder_entry(root, RESULTS_DIR)
    if results is None:
        return {}
    where = f"{ref}:{RESULTS_DIR}"
    tasks = [
        (e.name.decode("utf-8", "replace"), e.oid)
        for e in _read(repo, results, where, MAX_RESULTS_LISTING)
        if e.mode == TREE_MODE
    ]
    sites = []
    for (task, _), listing in zip(tasks, _read_all(repo, tasks, f"{where}/*"), strict=True):
        oid = _folder_entry(listing, site)
        if oid is not None:
            sites.append((task, oid))
    found = {}
    for (task, _), listing in zip(sites, _read_all(repo, sites, f"{where}/*/{site}"), strict=True):
        for entry in listing:
            if entry.name == STATUS_FILE.encode() and entry.mode in FILE_MODES:
                found[task] = entry.oid
    return found


def _read(repo: GitRepo, oid: str, where: str, max_bytes: int) -> list[RawEntry]:
    try:
        return read_folder(repo, oid, where=where, max_bytes=max_bytes)
    except TreeRefused as exc:
        raise RegistryError(str(exc)) from exc


def _read_all(repo: GitRepo, folders: list[tuple[str, str]], where: str) -> list[list[RawEntry]]:
    """The listings of (name, tree) ``folders``, MAX_TASK_LISTINGS bytes at most in all."""
    listings = read_folders(
        repo,
        [oid for _, oid in folders],
        max_bytes=MAX_TASK_LISTINGS,
        max_total_bytes=MAX_TASK_LISTINGS,
    )
    for (name, _), listing in zip(folders, listings, strict=True):
        if isinstance(listing, str):
            raise RegistryError(f"{where} ({name}): {listing.removeprefix('is ')}")
    return [listing for listing in listings if not isinstance(listing, str)]


def _folder_entry(listing: list[RawEntry], name: str) -> str | None:
    for entry in listing:
        if entry.name == name.encode() and entry.mode == TREE_MODE:
            return entry.oid
    return None


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
    proven = _proven(repo, tip, site, set(blobs), signers)
    return {task: blob for task, blob in blobs.items() if task not in proven}


def _proven(repo: GitRepo, tip: str, site: str, tasks: set[str], signers: Path) -> set[str]:
    """Of ``tasks``, those whose last status commit git finds signed by ``signers``' key. The
    history (anyone's to push) is read as a stream, newest first, and only until every task
    is decided; whatever cannot be read counts as not proven (never acted on)."""
    proven: set[str] = set()
    decided: set[str] = set()
    good = False
    command = ["log", "--format=%x1e%H %G?", "--name-only", tip, "--", f"{RESULTS_DIR}/"]
    config = ["-c", f"gpg.ssh.allowedSignersFile={signers}"]
    with repo.session(*config, *command) as log:
        while decided != tasks:
            try:
                line = log.read_line(limit=MAX_PATH_LINE)
            except EOFError:
                break  # the end, or a line no status path makes
            if len(line) > MAX_PATH_LINE:
                break  # the same, read whole (where it fit in what was read at once)
            if line.startswith(b"\x1e"):
                good = line.endswith(b" G")
                continue
            parts = line.decode("utf-8", "replace").split("/")
            is_status = len(parts) == 4 and parts[2] == site and parts[3] == STATUS_FILE
            if is_status and parts[1] in tasks and parts[1] not in decided:
                decided.add(parts[1])
                if good:
                    proven.add(parts[1])
    return proven
