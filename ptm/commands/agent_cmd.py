"""ptm agent run | once | check | status"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

# Imported here, though only a run seals results: an agent installed without it must say so
# at start (main names the extra), not fail inside a run's thread.
import pyrage  # noqa: F401

from ptm import __version__, logs
from ptm.agent import Agent
from ptm.commands.agent_admin_cmd import add_actions
from ptm.console import format_table, print_json, say, shorten
from ptm.errors import PtmError
from ptm.runtimes import open_site_runtime
from ptm.site_checks import CheckResult, run_checks
from ptm.site_repos import results_ledger, tasks_mirror
from ptm.siteconfig import SiteConfig, load_site_config
from ptm.urls import redact_text, redact_url
from ptm.watch import request_stop, run_until_stopped
from ptm.workdir import WorkDir


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("agent", help="the site agent (site admins)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    helps = {
        "run": ("watch the registry and run tasks until stopped (SIGINT/SIGTERM)", run_loop),
        "once": ("one cycle: sync, decide, run what is new, push; for cron and tests", run_once),
        "check": ("check the config, the registry and the container engine", run_check),
        "status": ("what this site has done and is doing", run_status),
    }
    for name, (text, handler) in helps.items():
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument(
            "--config", type=Path, required=True, metavar="FILE", help="the site config (YAML)"
        )
        if name in {"run", "once"}:
            action.add_argument(
                "--log-format",
                choices=logs.LOG_FORMATS,
                default="text",
                help="text for people (default; journal when run by systemd), json for one "
                "JSON object a line, journal for <N> syslog priority prefixes",
            )
            action.add_argument("-v", "--verbose", action="store_true", help="log more detail")
        if name in {"status", "check", "once"}:
            action.add_argument("--json", action="store_true", help="print JSON")
        action.set_defaults(handler=handler)
    _register_resume(actions)
    add_actions(actions)


def _register_resume(actions: argparse._SubParsersAction[Any]) -> None:
    resume = actions.add_parser(
        "resume",
        help="resume after a tamper halt, once you have looked (recorded, signed)",
        description="Clear the halt the agent set when the tasks branch was rewritten, after "
        "you have looked at what changed. Stop the agent first. The agent goes on from where "
        "the old and the new history meet (or --at COMMIT) and records your decision, signed "
        "with the site key, on the results branch at its next cycle.",
    )
    resume.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="the site config (YAML)"
    )
    resume.add_argument("--reason", required=True, metavar="TEXT", help="what you found")
    resume.add_argument("--as", dest="resumed_by", metavar="NAME", help="default: user@host")
    resume.add_argument("--at", metavar="COMMIT", help="go on from this tasks-branch commit")
    resume.add_argument("--json", action="store_true", help="print JSON")
    resume.set_defaults(handler=run_resume)


def _agent(config: SiteConfig) -> Agent:
    return Agent(config, open_site_runtime(config.runtime))


def run_loop(args: argparse.Namespace) -> int:
    # Logging first: warnings raised while docker or paramiko load must be log lines too.
    logs.configure(log_format=args.log_format, verbose=args.verbose)
    config = load_site_config(args.config)
    stop = threading.Event()
    stopped_by: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopped_by.append(signal.Signals(signum).name)
        request_stop(stop)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    agent = _agent(config)
    log = logging.getLogger(f"{logs.AGENT_LOGGER}{config.site}")
    with agent.workdir.locked():
        log.info("%s", start_line(config), extra={"decision": "started"})
        try:
            run_until_stopped(agent, stop)
        finally:
            reason = stopped_by[0] if stopped_by else "an error"
            log.info("ptm agent stopped (%s)", reason, extra={"decision": "stopped"})
    return 0


def start_line(config: SiteConfig) -> str:
    """What an admin needs to know from the first line of the log: which ptm, which site,
    which registry (without credentials) and what this site accepts."""
    policy = config.policy
    signed = (
        f"signed tasks required ({len(policy.trusted_submitters)} trusted submitter(s))"
        if policy.require_signed_tasks
        else "unsigned tasks accepted"
    )
    parts = [
        f"ptm agent {__version__} started for site {config.site}",
        f"registry {redact_url(config.registry.url)} branch {config.registry.branch}",
        f"policy: {len(policy.allowed_images)} allowed image rule(s), {signed}, "
        f"approval {policy.approval}, release {policy.release}, "
        f"at most {config.limits.max_parallel} task(s) at a time",
    ]
    return "; ".join(parts)


def run_once(args: argparse.Namespace) -> int:
    logs.configure(log_format=args.log_format, verbose=args.verbose)
    config = load_site_config(args.config)
    agent = _agent(config)
    with agent.workdir.locked():
        agent.start()
        report = agent.once()
    if args.json:
        print_json(report.__dict__)
    elif report.idle and not report.pushed:
        say(f"{config.site}: nothing to do (no new task, nothing to push)")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Every check, even after one failed; exit 1 when any failed (JSON either way)."""
    try:
        config = load_site_config(args.config)
    except PtmError as exc:
        results = [CheckResult("config", False, redact_text(str(exc)))]
        return _report_checks(args, None, results)
    engine = open_site_runtime(config.runtime)
    valid = CheckResult("config", True, f"{args.config}: valid, site {config.site!r}")
    return _report_checks(args, config.site, [valid, *run_checks(config, engine_ping=engine.ping)])


def _report_checks(args: argparse.Namespace, site: str | None, results: list[CheckResult]) -> int:
    failed = [r for r in results if not r.ok]
    if args.json:
        checks = [r.to_document() for r in results]
        print_json({"site": site, "ok": not failed, "checks": checks})
    else:
        for result in results:
            mark = "ok  " if result.ok else "FAIL"
            lines = printable(result.detail).splitlines() or [""]
            say(f"{mark} {result.name + ':':17} {lines[0]}")
            for line in lines[1:]:
                say(f"{'':23}{line}")
        say(f"{len(failed)} of {len(results)} checks failed." if failed else "All checks passed.")
    return 1 if failed else 0


def printable(text: str) -> str:
    """Control characters (but newlines) escaped, so a file or host cannot drive a terminal."""
    return "".join(c if c == "\n" or c.isprintable() else repr(c)[1:-1] for c in text)


def run_resume(args: argparse.Namespace) -> int:
    from ptm.resume import resume_after_halt

    config = load_site_config(args.config)
    workdir = WorkDir(config.workdir)
    mirror = tasks_mirror(config)
    with workdir.locked():
        record = resume_after_halt(
            workdir, mirror, reason=args.reason, resumed_by=args.resumed_by, at=args.at
        )
    if args.json:
        print_json(record.__dict__)
        return 0
    after = record.processed_after[:12]
    say(
        printable(
            f"Resumed as {record.resumed_by}: the agent goes on from tasks commit {after} "
            f"(head {record.tasks_head[:12]}). It records this on results/{config.site} at its "
            "next cycle; start it again (systemctl start ptm-agent@SITE, or ptm agent run)."
        )
    )
    return 0


def run_status(args: argparse.Namespace) -> int:
    config = load_site_config(args.config)
    workdir = WorkDir(config.workdir)
    state = workdir.load_state()
    ledger = results_ledger(config)
    records = ledger.all_records() if workdir.results_clone.is_dir() else []
    unpushed = workdir.results_clone.is_dir() and ledger.unpushed()
    if args.json:
        print_json(
            {
                "site": config.site,
                "processed": state.processed,
                "halted": state.halted,
                "warnings": list(state.warnings),
                "unpushed_results": unpushed,
                "tasks": [r.to_document() for r in records],
            }
        )
        return 0
    say(f"site {config.site}; last processed tasks commit {(state.processed or 'none')[:12]}")
    if state.halted:
        say(f"HALTED: {state.halted}")
        say(
            "Once you have looked, stop the agent and run: ptm agent resume --config "
            f"{printable(str(args.config))} --reason TEXT"
        )
    for warning in state.warnings:
        say(f"WARNING: {warning}")
    if unpushed:
        say("results committed locally but not pushed yet (the next cycle retries)")
    rows = [
        (r.task, r.state, r.finished_at or r.received_at, shorten(r.reason or "", 70))
        for r in records
    ]
    say(format_table(("TASK", "STATE", "WHEN", "REASON"), rows) if rows else "no tasks yet")
    return 0
