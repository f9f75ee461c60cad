"""ptm status [TASK]: task-by-site states from the tasks branch and every results branch."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from ptm.api import Registry
from ptm.console import format_table, print_json, printable, say, shorten, warn
from ptm.federation import WAITING, Overview, SiteStatus, TaskOverview, TaskStatus
from ptm.status import StatusRecord


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "status",
        help="task-by-site states from all result branches",
        description="Fetch the tasks branch and every results/<site> branch (one git fetch) "
        "and show where each task stands at each site; with TASK, that task in detail. "
        "Sites a task names that have not reported yet show as 'waiting'.",
    )
    parser.add_argument("task_id", nargs="?", metavar="TASK", help="show this task in detail")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--no-fetch", action="store_true", help="use what was fetched last; do not fetch"
    )
    add_location_options(parser)
    parser.set_defaults(handler=run)


def add_location_options(parser: argparse.ArgumentParser) -> None:
    """``--registry DIR`` or ``--url URL``: where the registry is (shared by several commands)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--registry",
        type=Path,
        metavar="DIR",
        help="your clone of the registry (default: the current folder or one above it)",
    )
    group.add_argument(
        "--url",
        metavar="URL",
        help="the registry's git URL, read through a cache clone in $XDG_CACHE_HOME/ptm/",
    )


def open_registry(args: argparse.Namespace) -> Registry:
    if args.url:
        return Registry.open_url(args.url)
    # Registry.open takes a clone, a folder inside one, or a bare repository.
    return Registry.open(args.registry or Path.cwd())


def run(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    if args.task_id:
        status = registry.status(args.task_id, refresh=not args.no_fetch)
        if args.json:
            print_json(task_status_document(status))
        else:
            say("\n".join(detail_lines(status)))
        return 0
    overview = registry.overview(refresh=not args.no_fetch)
    for branch in overview.ignored_branches:
        warn(f"ignored branch {branch!r}: not results/<site> with a valid site name")
    for problem in overview.problems:
        warn(f"refused: {problem}")
    if args.json:
        print_json(overview_document(overview))
    else:
        say(overview_text(overview))
    return 0


# -- the overview ------------------------------------------------------------------------------


def overview_text(overview: Overview) -> str:
    if not overview.tasks:
        return "No tasks in the registry yet."
    rows = [row for task in overview.tasks for row in _overview_rows(task)]
    table = format_table(("TASK", "SITE", "STATE", "REASON"), rows)
    return f"{table}\n\n{_counts_line(overview)}"


def _overview_rows(task: TaskOverview) -> list[tuple[str, str, str, str]]:
    # A cancel.yaml asks; each site's state says whether it was honoured (it may be refused).
    name = f"{task.task_id} [cancel requested]" if task.cancelled else task.task_id
    if task.problem is not None and not task.sites:
        return [(name, "-", "invalid", shorten(task.problem))]
    if not task.sites:
        return [(name, "*", WAITING, "no site has reported yet")]
    return [(name, s.site, s.state, shorten(s.reason or "")) for s in task.sites]


def _counts_line(overview: Overview) -> str:
    counts = Counter(site.state for task in overview.tasks for site in task.sites)
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no reports"
    tasks = len(overview.tasks)
    return (
        f"{tasks} task{'s' if tasks != 1 else ''}, {len(overview.sites)} sites with results "
        f"branches: {states}"
    )


def overview_document(overview: Overview) -> dict[str, Any]:
    return {
        "sites": list(overview.sites),
        "ignored_branches": list(overview.ignored_branches),
        "problems": list(overview.problems),
        "tasks": [
            {
                "task": task.task_id,
                "sites_requested": list(task.sites_requested),
                "cancelled": task.cancelled,
                "problem": task.problem,
                "sites": [
                    {"site": s.site, "state": s.state, "reason": s.reason} for s in task.sites
                ],
            }
            for task in overview.tasks
        ],
    }


# -- one task ----------------------------------------------------------------------------------


def detail_lines(status: TaskStatus) -> list[str]:
    lines = [f"Task {status.task_id}"]
    if status.task is not None:
        lines.append(f"  image        {printable(status.task.image)}")
        lines.append(f"  sites        {', '.join(status.task.sites)}")
        if status.task.description:
            lines.append(f"  description  {shorten(status.task.description, 200)}")
    if status.problem is not None:
        lines.append(f"  problem      {shorten(status.problem, 200)}")
    if status.cancellation is not None:
        requested_by = status.cancellation.requested_by
        by = f" (by {printable(requested_by)})" if requested_by else ""
        lines.append(f"  cancel asked {shorten(status.cancellation.reason, 200)}{by}")
    if not status.sites:
        lines += ["", "No site has reported yet."]
    for site in status.sites:
        lines += ["", *_site_lines(site)]
    return lines


def _site_lines(site: SiteStatus) -> list[str]:
    reason = f": {shorten(site.reason, 200)}" if site.reason else ""
    head = f"{site.site}  {site.state}{reason}"
    if site.record is None:
        return [head + ("  (no report yet)" if site.state == WAITING else "")]
    record = site.record
    fields = [
        ("received", record.received_at),
        ("started", record.started_at),
        ("finished", record.finished_at),
        ("exit code", record.exit_code),
        ("image", record.image_digest or record.image_id or record.image),
        ("submitted by", record.submitted_by),
        ("encrypted to", ", ".join(record.encrypted_to) or None),
        ("outputs", _sealed_outputs(record)),
        ("delivered to", record.delivered_to),
    ]
    lines = [head]
    lines += [f"  {label:<13}{printable(value)}" for label, value in fields if value is not None]
    where = " (at the SFTP target, not in git)" if record.delivered_to else ""
    lines += [f"  {'output':<13}{_output_line(entry)}{where}" for entry in record.outputs]
    return lines


def _sealed_outputs(record: StatusRecord) -> str | None:
    """An encrypted result's count and total size (its names are inside ``result.age``)."""
    if record.output_count is None:
        return None
    return f"{record.output_count} file(s), {record.output_bytes} bytes, encrypted"


def _output_line(entry: Any) -> str:
    return f"{printable(entry.get('path'))} ({printable(entry.get('bytes'))} bytes)"


def task_status_document(status: TaskStatus) -> dict[str, Any]:
    cancellation = status.cancellation
    return {
        "task": status.task_id,
        "image": status.task.image if status.task is not None else None,
        "sites_requested": list(status.sites_requested),
        "problem": status.problem,
        "cancelled": None
        if cancellation is None
        else {"reason": cancellation.reason, "requested_by": cancellation.requested_by},
        "done": status.is_done(),
        "sites": [
            {
                "site": site.site,
                "state": site.state,
                "reason": site.reason,
                "status": _record_document(site.record),
            }
            for site in status.sites
        ],
    }


def _record_document(record: StatusRecord | None) -> dict[str, Any] | None:
    return record.to_document() if record is not None else None
