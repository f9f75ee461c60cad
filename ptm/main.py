"""ptm's command line: argument parsing and dispatch; errors become exit codes here only."""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

from ptm import __version__
from ptm.commands import COMMAND_MODULES
from ptm.errors import PtmError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
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
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
        return result
    except PtmError as exc:
        print(f"ptm: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ptm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
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
