"""ptm agent pending | approve | deny | review | release: the site admin's decisions."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ptm.console import format_table, print_json, say
from ptm.decisions import (
    AdminDecision,
    Verdict,
    drop_decision,
    held_dir,
    make_decision,
    pending_decisions,
)
from ptm.errors import InvalidDocument, PtmError
from ptm.ledger import Ledger
from ptm.result_layout import LOG_FILE, OUTPUT_DIR
from ptm.schema import dump_yaml, load_yaml_text
from ptm.site_repos import results_ledger, tasks_mirror
from ptm.siteconfig import SiteConfig, load_site_config
from ptm.status import StatusRecord
from ptm.sync import TasksMirror
from ptm.workdir import WorkDir


def add_actions(actions: argparse._SubParsersAction[Any]) -> None:
    pending = actions.add_parser(
        "pending",
        help="tasks and results waiting for your decision",
        description="List tasks awaiting approval (policy.approval: manual) with image, "
        "signer, config and files, and finished results awaiting release (policy.release: "
        "manual).",
    )
    _config_option(pending)
    pending.add_argument("--json", action="store_true", help="print JSON")
    pending.set_defaults(handler=run_pending)
    review = actions.add_parser(
        "review",
        help="list the output files a finished task holds for release, with sizes",
        description="Show what would leave the site if you release TASK: its output files "
        "with sizes and its log size. The files are in the folder printed; open them there.",
    )
    review.add_argument("task_id", metavar="TASK", help="a finished task held for release")
    _config_option(review)
    review.add_argument("--json", action="store_true", help="print JSON")
    review.set_defaults(handler=run_review)
    verbs: dict[Verdict, str] = {
        "approve": "let a task that awaits approval run",
        "deny": "refuse a task awaiting approval, or withhold a finished task's results",
        "release": "publish the held results of a finished task",
    }
    for verdict, text in verbs.items():
        action = actions.add_parser(
            verdict,
            help=text,
            description=text[0].upper()
            + text[1:]
            + ". The agent records the decision on the results branch "
            "(signed with the site key) at its next cycle.",
        )
        action.add_argument("task_id", metavar="TASK", help="the task to decide on")
        _config_option(action)
        action.add_argument(
            "--reason",
            required=verdict == "deny",
            metavar="TEXT",
            help="why (shown to the researcher)",
        )
        action.add_argument(
            "--as", dest="decided_by", metavar="NAME", help="who decides (default: user@host)"
        )
        action.set_defaults(handler=run_decision, verdict=verdict)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="the site config (YAML)"
    )


def _ledger(config: SiteConfig) -> Ledger:
    workdir = WorkDir(config.workdir)
    if not (workdir.results_clone / "HEAD").is_file():
        raise PtmError(f"{config.workdir}: the agent has not run yet (no results clone)")
    return results_ledger(config)


def run_pending(args: argparse.Namespace) -> int:
    config = load_site_config(args.config)
    waiting = [
        r for r in _ledger(config).open_tasks() if r.state in {"awaiting_approval", "reviewing"}
    ]
    mirror = tasks_mirror(config)
    queued = {d.task_id: d for d in pending_decisions(WorkDir(config.workdir))}
    details = [_pending_detail(r, mirror, queued) for r in waiting]
    if args.json:
        print_json(details)
        return 0
    if not details:
        say("Nothing waits for a decision.")
    for item in details:
        say("\n".join(_pending_lines(item)))
    return 0


def _pending_lines(item: dict[str, Any]) -> list[str]:
    waits_for = {"awaiting_approval": "approval to run", "reviewing": "release of its results"}
    lines = [f"{item['task']}: {item['state']} (waits for {waits_for[item['state']]})"]
    lines += [f"  {key:<13}{item[key]}" for key in ("image", "submitted_by", "task_commit")]
    config = item["config"]
    shown = dump_yaml(config).strip() if isinstance(config, dict) else str(config)
    lines.append("  config       " + shown.replace("\n", "\n               "))
    lines.append("  input files  " + (", ".join(item["files"]) or "(none)"))
    decision = item["queued_decision"]
    if decision is not None:
        reason = f": {decision['reason']}" if decision["reason"] else ""
        lines.append(
            f"  queued       {decision['verdict']} by {decision['decided_by']} at "
            f"{decision['decided_at']}{reason} (the agent records it at its next cycle)"
        )
    return lines


def _pending_detail(
    record: StatusRecord, mirror: TasksMirror, queued: dict[str, AdminDecision]
) -> dict[str, Any]:
    snapshot = mirror.snapshot_at(record.task, record.task_commit)
    decision = queued.get(record.task)
    return {
        "task": record.task,
        "state": record.state,
        "image": record.image,
        "submitted_by": record.submitted_by or "(signature not checked)",
        "task_commit": record.task_commit,
        "config": _task_config(snapshot.task_text, record.task),
        "files": list(snapshot.file_names),
        "queued_decision": asdict(decision) if decision is not None else None,
    }


def _task_config(task_text: bytes | None, task_id: str) -> dict[str, Any] | str | None:
    """The task's ``config`` (what the container reads), not the whole task.yaml."""
    if task_text is None:
        return None
    try:
        document = load_yaml_text(task_text, source=f"tasks/{task_id}/task.yaml")
    except InvalidDocument as exc:
        return f"(task.yaml unreadable: {exc.problems[0].message})"
    config = document.get("config")
    return config if isinstance(config, dict) else None


def run_review(args: argparse.Namespace) -> int:
    config = load_site_config(args.config)
    held = held_dir(WorkDir(config.workdir), args.task_id)
    if not held.is_dir():
        raise PtmError(f"task {args.task_id!r} has no results waiting for release at this site")
    outputs = held / OUTPUT_DIR
    files = (
        [
            (str(p.relative_to(held)), p.stat().st_size)
            for p in sorted(outputs.rglob("*"))
            if p.is_file()
        ]
        if outputs.is_dir()
        else []
    )
    log_bytes = (held / LOG_FILE).stat().st_size
    if args.json:
        print_json(
            {
                "task": args.task_id,
                "folder": str(held),
                "log_bytes": log_bytes,
                "files": [{"path": p, "bytes": b} for p, b in files],
            }
        )
        return 0
    say(f"Held results of {args.task_id} in {held}:")
    say(format_table(("OUTPUT FILE", "BYTES"), [*files, (LOG_FILE, log_bytes)]))
    total = sum(b for _, b in files)
    say(
        f"{len(files)} output files ({total} bytes) and the log ({log_bytes} bytes) would leave "
        f"the site. Release with: ptm agent release {args.task_id} --config {args.config}"
    )
    return 0


def run_decision(args: argparse.Namespace) -> int:
    config = load_site_config(args.config)
    record = _ledger(config).status_of(args.task_id)
    wanted = {
        "approve": {"awaiting_approval"},
        "release": {"reviewing"},
        "deny": {"awaiting_approval", "reviewing"},
    }[args.verdict]
    if record is None or record.state not in wanted:
        state = record.state if record else "not known at this site"
        raise PtmError(f"cannot {args.verdict} task {args.task_id!r}: it is {state}")
    decision = make_decision(
        args.task_id, args.verdict, reason=args.reason, decided_by=args.decided_by
    )
    drop_decision(WorkDir(config.workdir), decision)
    done = {"approve": "Approved", "deny": "Denied", "release": "Released"}[args.verdict]
    say(
        f"{done} task {args.task_id} as {decision.decided_by}. The agent records the decision "
        "on the results branch at its next cycle (or run 'ptm agent once')."
    )
    return 0
