"""ptm audit"""

from __future__ import annotations

import argparse
import unicodedata
from pathlib import Path
from typing import Any

from ptm.audit import AuditOptions, AuditReport, CommitCheck, TaskAudit, run_audit
from ptm.commands.status_cmd import add_location_options, open_registry
from ptm.console import format_table, print_json, say
from ptm.errors import PtmError

_UNPRINTABLE = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "audit",
        help="the registry's history: who asked, what ran where, and who signed each step",
        description="Read the tasks branch and every results/<site> branch, merges included, "
        "and report, for each task, who submitted it (signatures verified with ssh-keygen "
        "against --allowed-signers, as of the time a site recorded receiving the task, else "
        "the commit date), what each site recorded, the exact image that ran, and every rule "
        "broken: unsigned task or result commits, merges with content none of their parents "
        "had, unsigned merges of results, cancels not signed by the submitter or a trusted "
        "canceller, tasks changed after a site acted on them, results acting on commits that "
        "are not on the tasks branch, result branches writing outside their own site's "
        "folders, and task folders that cannot be read. Exit 1 when there is any finding.",
    )
    parser.add_argument(
        "--allowed-signers",
        type=Path,
        metavar="FILE",
        help="git's SSH allowed-signers file with the researchers' and the "
        "sites' keys; without it, signatures are not checked",
    )
    parser.add_argument(
        "--trusted-canceller",
        action="append",
        default=[],
        metavar="PRINCIPAL",
        help="a principal who may cancel any task, besides its submitter (as a site's "
        "policy.trusted_cancellers); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_location_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    signers: Path | None = args.allowed_signers
    if signers is not None and not signers.is_file():
        raise PtmError(f"{signers}: no such allowed signers file")
    registry = open_registry(args)
    registry.refresh()
    options = AuditOptions(signers.resolve() if signers else None, tuple(args.trusted_canceller))
    report = run_audit(registry.repo, registry.refs, options)
    if args.json:
        print_json(_document(report))
    else:
        _print(report)
    return 1 if report.findings else 0


def _print(report: AuditReport) -> None:
    rows = [tuple(map(_printable, row)) for task in report.tasks for row in _rows(task)]
    say(
        format_table(
            (
                "TASK",
                "SUBMITTED BY",
                "SITE",
                "STATE",
                "IMAGE RUN",
                "RESULTS SIGNED BY",
                "ENCRYPTED TO",
            ),
            rows,
        )
    )
    if not report.signatures_checked:
        say("Signatures were not checked: pass --allowed-signers FILE.")
    say("")
    for finding in report.findings:
        say(f"  {_printable(finding)}")
    say(f"{len(report.tasks)} task(s), {len(report.findings)} finding(s).")


def _rows(task: TaskAudit) -> list[tuple[object, ...]]:
    if not task.sites:
        return [(task.task_id, task.submitted_by, None, None, None, None, None)]
    return [
        (
            task.task_id if i == 0 else "",
            task.submitted_by if i == 0 else "",
            site.site,
            site.state,
            _short_image(site.image_ref),
            _signers(site.commits),
            ", ".join(_short_key(k) for k in site.encrypted_to) or "-",
        )
        for i, site in enumerate(task.sites)
    ]


def _short_image(ref: str | None) -> str | None:
    """``sha256:`` and 12 hex digits, like docker prints IDs; --json has them whole."""
    if ref is None or "sha256:" not in ref:
        return ref
    name, _, digest = ref.rpartition("sha256:")
    return f"{name}sha256:{digest[:12]}"


def _short_key(fingerprint: str) -> str:
    """``SHA256:`` and 12 characters of a key fingerprint; --json has them whole."""
    return fingerprint[: len("SHA256:") + 12]


def _signers(commits: tuple[CommitCheck, ...]) -> str:
    texts = sorted({c.signature_text() for c in commits})
    return ", ".join(texts) if texts else "-"


def _document(report: AuditReport) -> dict[str, Any]:
    return {
        "signatures_checked": report.signatures_checked,
        "tasks": [
            {
                "task": t.task_id,
                "commits": [_commit_document(c) for c in t.commits],
                "sites": [
                    {
                        "site": s.site,
                        "state": s.state,
                        "image": s.image,
                        "image_run": s.image_ref,
                        "task_commit": s.task_commit,
                        "encrypted_to": list(s.encrypted_to),
                        "commits": [_commit_document(c) for c in s.commits],
                    }
                    for s in t.sites
                ],
            }
            for t in report.tasks
        ],
        "findings": [f.__dict__ for f in report.findings],
    }


def _commit_document(check: CommitCheck) -> dict[str, Any]:
    return {
        **check.signature.__dict__,
        "checked": check.checked,
        "is_merge": check.is_merge,
        "date": check.date,
        "paths": list(check.paths),
    }


def _printable(value: object) -> object:
    """Names and messages come from the registry: control characters reach no terminal."""
    if value is None:
        return None
    return "".join(
        char.encode("unicode_escape").decode("ascii")
        if unicodedata.category(char) in _UNPRINTABLE
        else char
        for char in str(value)
    )
