"""ptm's command line: argument parsing and dispatch; errors become exit codes here only."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

from ptm import __version__, logs
from ptm.commands import COMMANDS, command_module, install_hint, missing_extra
from ptm.console import printable_lines
from ptm.errors import PtmError
from ptm.urls import redact_text

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
NO_GIT = "ptm: error: git was not found on PATH; install git (2.34 or newer) and try again"


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The full parser for command ``selected``; every other command gets only its name and
    help, so that nothing but the chosen command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="ptm",
        description=(
            "The Personal Health Train on git: researchers submit analyses (Docker images) as "
            "tasks to a git registry; site agents at hospitals run them next to the data and "
            "push back only the results."
        ),
        epilog="Run 'ptm COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"ptm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, text) in COMMANDS.items():
        if name == selected:
            command_module(name).register(commands)
        else:
            commands.add_parser(name, help=text, add_help=False)
    return parser


def selected_command(argv: Sequence[str]) -> str | None:
    """The command named on the line: the first word that is not an option."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logs.route_warnings()
    selected = selected_command(argv)
    if selected is not None and shutil.which("git") is None:
        # Checked before the command runs: every command needs git, and a missing one would
        # surface as some git call's OSError in the middle of the work.
        print(NO_GIT, file=sys.stderr)
        return EXIT_ERROR
    args: argparse.Namespace | None = None
    try:
        args = build_parser(selected).parse_args(argv)
        result: int = args.handler(args)
        return result
    except PtmError as exc:
        print(f"ptm: error: {printable_lines(redact_text(str(exc)))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ptm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as exc:
        return _missing_library(invoked_words(argv, args), exc)
    except Exception:
        return _unexpected_error()


def _missing_library(words: list[str], exc: ModuleNotFoundError) -> int:
    """A library of an extra that is not installed is a choice made at install time, not a
    bug: one line naming the extra. Any other missing module is a broken install (exit 3)."""
    extra = missing_extra(words[0], exc) if words else None
    if extra is None:
        return _unexpected_error()
    needs = f"ptm {' '.join(words)} needs the {extra} extra: {install_hint(extra)}"
    print(f"ptm: error: {printable_lines(needs)}", file=sys.stderr)
    return EXIT_ERROR


def invoked_words(argv: Sequence[str], args: argparse.Namespace | None) -> list[str]:
    """The command (and its action) as typed: from the parsed arguments once parsing got that
    far, else the first two words of the line (the command's module failed to import)."""
    if args is not None:
        action = getattr(args, "action", None)
        return [args.command, *([action] if isinstance(action, str) else [])]
    words = list(argv)
    start = next((i for i, word in enumerate(words) if not word.startswith("-")), len(words))
    following = words[start + 1 : start + 2]
    return words[start : start + 1] + [w for w in following if not w.startswith("-")]


def _unexpected_error() -> int:
    log = _write_crash_log()
    print(
        f"ptm: an unexpected error occurred (a bug in ptm); the traceback is in {log}",
        file=sys.stderr,
    )
    return EXIT_BUG


def _write_crash_log() -> Path:
    with tempfile.NamedTemporaryFile(
        "w", prefix="ptm-crash-", suffix=".log", delete=False, encoding="utf-8"
    ) as log:
        log.write(f"ptm {__version__}\n{' '.join(sys.argv)}\n\n{traceback.format_exc()}")
    return Path(log.name)


if __name__ == "__main__":
    raise SystemExit(main())
