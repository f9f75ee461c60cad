"""ptm results TASK: copy each site's status, log and output files into a local folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from ptm.api import DEFAULT_POLL_INTERVAL, SiteResult, WaitTimedOut
from ptm.commands.status_cmd import add_location_options, open_registry
from ptm.console import format_table, print_json, say, shorten, warn
from ptm.errors import PtmError
from ptm.federation import TaskStatus

REFUSED = "refused"  # shown for a site whose results were refused as a whole


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "results",
        help="collect a task's results from every site",
        description="Copy each site's output/, log.txt and status.yaml into DIR/<site>/ "
        "(default ./results/TASK/); each site's folder is replaced as a whole, and nothing is "
        "written outside DIR. With --wait, first wait until every targeted site reached a "
        "final state: the sites the task names, or for a task sent to every site ('*') the "
        "sites that have reported so far (name the ones you expect with --site).",
    )
    parser.add_argument("task_id", metavar="TASK", help="the task whose results to collect")
    parser.add_argument("--out", type=Path, metavar="DIR", help="where to write (./results/TASK)")
    parser.add_argument(
        "--site",
        dest="sites",
        action="append",
        default=[],
        metavar="SITE",
        help="only this site (repeatable); with --wait, wait for these sites",
    )
    parser.add_argument("--wait", action="store_true", help="wait until every site has finished")
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="with --wait: give up after this long"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_POLL_INTERVAL,
        metavar="SECONDS",
        help=f"with --wait: seconds between fetches (default {DEFAULT_POLL_INTERVAL:g})",
    )
    parser.add_argument(
        "--identity",
        type=Path,
        metavar="KEY",
        help="SSH private key that decrypts encrypted results (default: git's user.signingkey "
        "without .pub)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_location_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if (args.timeout is not None and args.timeout < 0) or args.interval <= 0:
        raise PtmError("--timeout must be 0 or more and --interval more than 0 seconds")
    registry = open_registry(args)
    out_dir: Path = args.out or Path("results") / args.task_id
    timed_out: WaitTimedOut | None = None
    if args.wait:
        progress = ProgressLine(sys.stderr)
        try:
            registry.wait(
                args.task_id,
                timeout=args.timeout,
                sites=args.sites,
                poll_interval=args.interval,
                on_progress=lambda status, elapsed: progress.show(status, elapsed, args.sites),
            )
        except WaitTimedOut as exc:
            timed_out = exc
        finally:
            progress.close()
    results = registry.results(
        args.task_id, out_dir, sites=args.sites, refresh=not args.wait, identity=args.identity
    )
    _report(args, out_dir, results)
    if timed_out is not None:
        raise PtmError(f"{timed_out}; collected what there is in {out_dir}")
    return 0


def _report(args: argparse.Namespace, out_dir: Path, results: dict[str, SiteResult]) -> None:
    for result in results.values():
        if result.problem is not None:
            warn(f"{result.site}: refused, nothing collected: {result.problem}")
        for refused in result.refused:
            warn(f"{result.site}: not written: {refused}")
    if args.json:
        print_json(results_document(args.task_id, out_dir, results))
        return
    if not results:
        say(f"No site has reported on task {args.task_id} yet; nothing was written.")
        return
    rows = [
        (r.site, _state(r), len(r.output_files), _folder(r), shorten(_reason(r), 50))
        for r in results.values()
    ]
    say(format_table(("SITE", "STATE", "OUTPUT FILES", "FOLDER", "REASON"), rows))
    for r in results.values():
        if _delivered_to(r):
            count = len(r.record.outputs) if r.record is not None else 0
            say(
                f"{r.site}: {count} output file(s) were delivered to {_delivered_to(r)}, not to git"
            )


def _state(result: SiteResult) -> str:
    return REFUSED if result.problem is not None else result.state


def _folder(result: SiteResult) -> str:
    return "-" if result.problem is not None else str(result.folder)


def _delivered_to(result: SiteResult) -> str | None:
    return result.record.delivered_to if result.record is not None else None


def _reason(result: SiteResult) -> str:
    if result.problem is not None:
        return result.problem
    return (result.record.reason if result.record is not None else None) or ""


def results_document(task_id: str, out_dir: Path, results: dict[str, SiteResult]) -> dict[str, Any]:
    return {
        "task": task_id,
        "out": str(out_dir),
        "sites": {
            site: {
                "state": r.state,
                "folder": str(r.folder),
                "files": list(r.files),
                "refused": list(r.refused),
                "problem": r.problem,
                "reason": _reason(r) or None,
                "delivered_to": _delivered_to(r),
            }
            for site, r in results.items()
        },
    }


class ProgressLine:
    """One progress line: rewritten in place with ``\\r`` on a terminal, else a line per change."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = ""
        self._width = 0

    def show(self, status: TaskStatus, elapsed: float, sites: list[str]) -> None:
        text = progress_text(status, sites)
        if self._tty:
            line = f"{text} · {elapsed:.0f}s"
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        elif text != self._last:
            self._stream.write(text + "\n")
        self._last = text
        self._stream.flush()

    def close(self) -> None:
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()


def progress_text(status: TaskStatus, sites: list[str]) -> str:
    targets = status.targets(sites)
    unfinished = status.unfinished(sites)
    if not targets:
        return f"{status.task_id}: waiting for a first site to report"
    done = len(targets) - len(unfinished)
    pending = ", ".join(f"{s.site} {s.state}" for s in unfinished[:4])
    more = f" +{len(unfinished) - 4}" if len(unfinished) > 4 else ""
    tail = f" (waiting: {pending}{more})" if unfinished else ""
    return f"{status.task_id}: {done}/{len(targets)} sites finished{tail}"
