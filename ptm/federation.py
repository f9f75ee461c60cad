"""The federation as one registry shows it: tasks on the tasks branch, results on ``results/*``.

Built for registries with thousands of tasks and dozens of sites, with few git processes
whatever the size: one ``git fetch`` (``fetch``) brings the tasks branch and every results
branch; ``read_overview`` lists each branch with one ``git ls-tree -r`` (only branches whose tip
moved since the last run, with an ``OverviewMemo``) and reads the files it needs with one
``git cat-file --batch``, through ``ptm.flatyaml``'s quick reading; ``read_task_status`` reads
one task's files and validates each in full.

Nothing on any branch is trusted: trees are walked through ``ptm.federation_trees`` (checked
level by level, sizes before contents). A branch whose name is not ``results/<valid site>`` is
ignored and listed; a site speaks only for itself (files on ``results/a`` under
``results/<task>/b/`` are not read); a status that cannot be read or whose path was refused (a
duplicate, a link, a blob where a folder should be…) shows as ``invalid`` with the problem, and
refused entries that name no task are listed in ``Overview.problems``, instead of stopping the
whole overview.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ptm.errors import InvalidDocument, PtmError
from ptm.federation_trees import (
    Found,
    Listing,
    one_task_files,
    status_listings,
    task_listing,
)
from ptm.flatyaml import MAX_FLAT_BYTES, read_flat_fields
from ptm.gitrepo import GitRepo
from ptm.names import is_valid_name
from ptm.overview_memo import OverviewMemo, Reading
from ptm.result_layout import RESULTS_DIR, STATUS_FILE, result_path
from ptm.schema import MAX_DOCUMENT_BYTES, load_yaml_text
from ptm.status import FINAL_STATES, STATES, StatusRecord
from ptm.task import CANCEL_FILE, EVERY_SITE, TASK_FILE, TASKS_DIR, Cancellation, Task
from ptm.tree_paths import Refused, iter_blobs

WAITING = "waiting"  # a site the task names has not reported anything yet
INVALID = "invalid"  # a site's status.yaml could not be read or broke the schema
READ_KEYS = ("ptm", "task", "site", "state", "reason", "sites")  # what the overview reads


# -- where things are --------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryRefs:
    """The local refs that mirror a registry's branches (``refs/remotes/<remote>/…``)."""

    remote: str
    tasks_branch: str

    @property
    def tasks_ref(self) -> str:
        return f"refs/remotes/{self.remote}/{self.tasks_branch}"

    @property
    def results_ref_prefix(self) -> str:
        return f"refs/remotes/{self.remote}/{RESULTS_DIR}/"

    def results_ref(self, site: str) -> str:
        return self.results_ref_prefix + site

    def refspecs(self) -> tuple[str, str]:
        return (
            f"+refs/heads/{self.tasks_branch}:{self.tasks_ref}",
            f"+refs/heads/{RESULTS_DIR}/*:{self.results_ref_prefix}*",
        )


def fetch(repo: GitRepo, refs: RegistryRefs) -> None:
    """Bring the tasks branch and every results branch up to date, in one ``git fetch``."""
    repo.run("fetch", "--quiet", "--prune", "--no-tags", refs.remote, *refs.refspecs())


@dataclass(frozen=True)
class ResultBranches:
    """The results branches present locally: valid site → ref and tip, names ignored."""

    refs: Mapping[str, str]
    tips: Mapping[str, str]
    ignored: tuple[str, ...]


def result_branches(repo: GitRepo, refs: RegistryRefs) -> ResultBranches:
    out = repo.run("for-each-ref", "--format=%(objectname) %(refname)", refs.results_ref_prefix)
    found: dict[str, tuple[str, str]] = {}
    ignored: list[str] = []
    for line in out.splitlines():
        tip, _, ref = line.partition(" ")
        site = ref.removeprefix(refs.results_ref_prefix)
        if is_valid_name(site):
            found[site] = (ref, tip)
        else:
            ignored.append(f"{RESULTS_DIR}/{site}")
    ordered = sorted(found.items())
    return ResultBranches(
        {site: ref for site, (ref, _) in ordered},
        {site: tip for site, (_, tip) in ordered},
        tuple(sorted(ignored)),
    )


# -- the overview: every task, every site ------------------------------------------------------


@dataclass(frozen=True)
class SiteState:
    """Where one task stands at one site, as the overview shows it."""

    site: str
    state: str  # a status.yaml state, WAITING or INVALID
    reason: str | None  # the site's reason; for INVALID, what is wrong with its status.yaml

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class TaskOverview:
    task_id: str
    sites_requested: tuple[str, ...]  # names, or ("*",); () when task.yaml could not be read
    cancelled: bool
    problem: str | None  # why task.yaml could not be read, or that it is missing
    sites: tuple[SiteState, ...]


@dataclass(frozen=True)
class Overview:
    tasks: tuple[TaskOverview, ...]
    sites: tuple[str, ...]  # every site with a results branch
    ignored_branches: tuple[str, ...]  # results/* branches whose name is not a valid site
    problems: tuple[str, ...] = ()  # refused entries of the branches that name no task


@dataclass(frozen=True)
class _TaskHead:
    sites: tuple[str, ...]
    problem: str | None


def read_overview(
    repo: GitRepo, refs: RegistryRefs, *, memo: OverviewMemo | None = None
) -> Overview:
    """Every task on the tasks branch and every report on the results branches (no fetch).

    With a ``memo`` (see ``ptm.overview_memo``), only branches whose tip moved are listed and
    only files that changed are read again; the memo is saved afterwards.
    """
    memo = memo if memo is not None else OverviewMemo(None)
    tasks = _task_files(repo, refs, memo)
    branches = result_branches(repo, refs)
    reports = _status_listings(repo, branches, memo)
    needed = {files.oid for files in tasks.found.values() if files.oid}
    needed.update(f.oid for listing in reports.values() for f in listing.found.values() if f.oid)
    readings = _readings(repo, needed, memo)
    memo.save()
    heads = {
        task_id: _task_head(task_id, files, readings, refs)
        for task_id, files in tasks.found.items()
    }
    by_task: dict[str, list[SiteState]] = {}
    for site, listing in reports.items():
        for task_id, found in listing.found.items():
            state = _site_state(task_id, site, found, readings)
            by_task.setdefault(task_id, []).append(state)
    task_ids = sorted(set(tasks.found) | set(by_task))
    rows = tuple(
        _overview_row(t, heads.get(t), tasks.found.get(t), by_task.get(t, []), refs)
        for t in task_ids
    )
    problems = (*tasks.problems, *(p for listing in reports.values() for p in listing.problems))
    return Overview(rows, tuple(branches.refs), branches.ignored, problems)


def _task_files(repo: GitRepo, refs: RegistryRefs, memo: OverviewMemo) -> Listing:
    """task id → blob ids of its task.yaml and cancel.yaml, from the tasks branch."""
    tip = repo.rev_parse(refs.tasks_ref)
    if tip is None:
        raise PtmError(
            f"no branch {refs.tasks_branch!r} at {refs.remote}: is this a ptm registry, and is "
            "the right tasks branch set in registry.yaml?"
        )
    key = f"tasks-branch {tip}"  # listing keys: a space cannot occur in a site name
    text = memo.listing(key)
    listing = _decode_listing(text) if text is not None else None
    if listing is None:
        listing = task_listing(repo, tip, refs.tasks_branch)
        memo.add_listing(key, _encode_listing(listing))
    return listing


def _status_listings(
    repo: GitRepo, branches: ResultBranches, memo: OverviewMemo
) -> dict[str, Listing]:
    """Each site's listing of its own ``results/<task>/<site>/status.yaml`` files."""
    keys = {site: f"results {site} {tip}" for site, tip in branches.tips.items()}
    found: dict[str, Listing] = {}
    for site, key in keys.items():
        text = memo.listing(key)
        listing = _decode_listing(text) if text is not None else None
        if listing is not None:
            found[site] = listing
    missing = {site: branches.tips[site] for site in keys if site not in found}
    for site, listing in status_listings(repo, missing).items():
        memo.add_listing(keys[site], _encode_listing(listing))
        found[site] = listing
    return dict(sorted(found.items()))


def _encode_listing(listing: Listing) -> str:
    found = {k: [f.oid, f.cancel_oid, f.problem] for k, f in listing.found.items()}
    return json.dumps({"found": found, "problems": list(listing.problems)})


def _decode_listing(text: str) -> Listing | None:
    """A listing the memo kept; None when it is not one (another format, damaged)."""
    try:
        document = json.loads(text)
        found = {k: Found(*v) for k, v in document["found"].items()}
        return Listing(found, tuple(str(p) for p in document["problems"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _readings(repo: GitRepo, oids: set[str], memo: OverviewMemo) -> dict[str, Reading]:
    missing = memo.missing_readings(oids)
    # read a chunk at a time and keep only the fields: memory stays small however many files
    for oid, data in iter_blobs(repo, missing, max_bytes=MAX_DOCUMENT_BYTES):
        reading = read_file_fields(data) if isinstance(data, bytes) else {"problem": data}
        memo.add_reading(oid, reading)
    return memo.readings(oids)


def read_file_fields(data: bytes | None) -> Reading:
    """The READ_KEYS of one file, or the problem (without the file's name) that stopped it."""
    if data is None:
        return {"problem": "could not be read"}
    try:
        return {"fields": read_flat_fields(data, READ_KEYS, source="")}
    except InvalidDocument as exc:
        first = exc.problems[0]
        return {"problem": f"{first.path}: {first.message} [{first.rule}]"}


def _task_head(
    task_id: str, files: Found, readings: Mapping[str, Reading], refs: RegistryRefs
) -> _TaskHead:
    source = f"{refs.tasks_branch}:{TASKS_DIR}/{task_id}/{TASK_FILE}"
    if files.problem is not None and files.oid is None:
        return _TaskHead((), files.problem)
    reading = readings.get(files.oid) if files.oid else None
    if reading is None or "fields" not in reading:
        problem = reading.get("problem") if reading else "could not be read"
        return _TaskHead((), f"{source}: {problem}")
    sites = reading["fields"].get("sites")
    if not isinstance(sites, list) or not sites:
        return _TaskHead((), f"{source}: sites: must be a list of site names")
    if not all(s == EVERY_SITE or is_valid_name(s) for s in sites):
        return _TaskHead((), f"{source}: sites: holds something that is not a site name")
    return _TaskHead(tuple(sites), None)


def _site_state(
    task_id: str, site: str, found: Found, readings: Mapping[str, Reading]
) -> SiteState:
    source = f"{RESULTS_DIR}/{site}:{result_path(task_id, site)}/{STATUS_FILE}"
    if found.oid is None:
        return SiteState(site, INVALID, found.problem or f"{source}: could not be read")
    reading = readings.get(found.oid)
    if reading is None or "fields" not in reading:
        problem = reading.get("problem") if reading else "could not be read"
        return SiteState(site, INVALID, f"{source}: {problem}")
    fields = reading["fields"]
    problem = _summary_problem(fields, task_id, site)
    if problem is not None:
        return SiteState(site, INVALID, f"{source}: {problem}")
    return SiteState(site, str(fields["state"]), fields.get("reason"))


def _summary_problem(fields: Mapping[str, Any], task_id: str, site: str) -> str | None:
    if type(fields.get("ptm")) is not int or fields.get("ptm") != 1:  # true == 1 in Python
        return "ptm: must be 1"
    if fields.get("task") != task_id or fields.get("site") != site:
        return f"task and site must be {task_id!r} and {site!r} (the folder it is in)"
    if fields.get("state") not in STATES:
        return f"state: {str(fields.get('state'))[:40]!r} is not a known state"
    if not isinstance(fields.get("reason"), (str, type(None))):
        return "reason: must be text or null"
    return None


def _overview_row(
    task_id: str,
    head: _TaskHead | None,
    files: Found | None,
    states: list[SiteState],
    refs: RegistryRefs,
) -> TaskOverview:
    reported = {state.site: state for state in states}
    if head is None:
        head = _TaskHead((), f"no {TASKS_DIR}/{task_id}/{TASK_FILE} on {refs.tasks_branch}")
    expected = [s for s in head.sites if s != EVERY_SITE and s not in reported]
    waiting = [SiteState(site, WAITING, None) for site in expected]
    sites = tuple(sorted([*reported.values(), *waiting], key=lambda s: s.site))
    cancelled = files is not None and files.cancel_oid is not None
    return TaskOverview(task_id, head.sites, cancelled, head.problem, sites)


def _first_problem(exc: InvalidDocument) -> str:
    return str(exc.problems[0]) if exc.problems else str(exc)


# -- one task in detail ------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteStatus:
    """One site's full, validated status for a task; ``record`` is None for waiting/invalid."""

    site: str
    state: str  # a status.yaml state, WAITING or INVALID
    record: StatusRecord | None
    problem: str | None = None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def reason(self) -> str | None:
        return self.record.reason if self.record is not None else self.problem


@dataclass(frozen=True)
class TaskStatus:
    """A task and every site's status for it. ``task`` is None when task.yaml is unreadable."""

    task_id: str
    task: Task | None
    problem: str | None
    cancellation: Cancellation | None
    sites: tuple[SiteStatus, ...]

    @property
    def sites_requested(self) -> tuple[str, ...]:
        return self.task.sites if self.task is not None else ()

    def site(self, name: str) -> SiteStatus | None:
        return next((s for s in self.sites if s.site == name), None)

    def targets(self, only: Sequence[str] = ()) -> tuple[str, ...]:
        """The sites to wait for: ``only`` if given, else the named sites, else those that
        reported (a ``*`` task has no list of sites to wait for)."""
        if only:
            return tuple(sorted(set(only)))
        named = [s for s in self.sites_requested if s != EVERY_SITE]
        if named and EVERY_SITE not in self.sites_requested:
            return tuple(sorted(set(named)))
        return tuple(s.site for s in self.sites if s.state != WAITING)

    def unfinished(self, only: Sequence[str] = ()) -> tuple[SiteStatus, ...]:
        result = []
        for name in self.targets(only):
            status = self.site(name) or SiteStatus(name, WAITING, None)
            if not status.is_final:
                result.append(status)
        return tuple(result)

    def is_done(self, only: Sequence[str] = ()) -> bool:
        """True when every targeted site reached a final state (and there is one at least)."""
        return bool(self.targets(only)) and not self.unfinished(only)


def read_task_status(repo: GitRepo, refs: RegistryRefs, task_id: str) -> TaskStatus:
    """One task from the local refs (no fetch); PtmError when the registry knows nothing of it."""
    if not is_valid_name(task_id):
        raise PtmError(f"{task_id!r} is not a valid task id")
    branches = result_branches(repo, refs)
    files = one_task_files(
        repo, repo.rev_parse(refs.tasks_ref), refs.tasks_branch, task_id, branches.tips
    )
    task_data, cancel_data = files.task, files.cancel
    reported = [
        _full_site_status(task_id, site, data)
        for site, data in files.statuses.items()
        if data is not None
    ]
    if task_data is None and not reported:
        raise PtmError(f"no task {task_id!r} in the registry (branch {refs.tasks_branch})")
    task, problem = _load_task(task_id, task_data, refs)
    names = {s.site for s in reported}
    named = [s for s in (task.sites if task else ()) if s != EVERY_SITE and s not in names]
    waiting = [SiteStatus(site, WAITING, None) for site in named]
    sites = tuple(sorted([*reported, *waiting], key=lambda s: s.site))
    return TaskStatus(task_id, task, problem, _load_cancel(task_id, cancel_data, refs), sites)


def _load_task(
    task_id: str, data: bytes | Refused | None, refs: RegistryRefs
) -> tuple[Task | None, str | None]:
    source = f"{refs.tasks_branch}:{TASKS_DIR}/{task_id}/{TASK_FILE}"
    if data is None:
        return None, f"no {source}"
    if isinstance(data, Refused):
        return None, str(data)
    try:
        return Task.from_document(task_id, load_yaml_text(data, source=source), source=source), None
    except InvalidDocument as exc:
        return None, str(exc)


def _load_cancel(
    task_id: str, data: bytes | Refused | None, refs: RegistryRefs
) -> Cancellation | None:
    if data is None:
        return None
    if isinstance(data, Refused):
        return Cancellation(task_id, f"(its reason is not shown: {data})")
    source = f"{refs.tasks_branch}:{TASKS_DIR}/{task_id}/{CANCEL_FILE}"
    try:
        document = load_yaml_text(data, source=source)
    except InvalidDocument:
        return Cancellation(task_id, "(cancel.yaml could not be read)")
    reason = document.get("reason")
    requested_by = document.get("requested_by")
    return Cancellation(
        task_id,
        reason if isinstance(reason, str) else "(no reason given)",
        requested_by if isinstance(requested_by, str) else None,
    )


def _full_site_status(task_id: str, site: str, data: bytes | Refused) -> SiteStatus:
    source = f"{RESULTS_DIR}/{site}:{result_path(task_id, site)}/{STATUS_FILE}"
    if isinstance(data, Refused):
        return SiteStatus(site, INVALID, None, str(data))
    try:
        document = load_yaml_text(data, source=source, max_bytes=MAX_FLAT_BYTES)
        record = StatusRecord.from_document(document, source=source)
    except InvalidDocument as exc:
        return SiteStatus(site, INVALID, None, _first_problem(exc))
    if record.task != task_id or record.site != site:
        message = f"{source}: names task {record.task!r} at site {record.site!r}"
        return SiteStatus(site, INVALID, None, message)
    return SiteStatus(site, record.state, record)
