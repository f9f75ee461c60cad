"""Agent logs: one readable line per decision for a site admin, or JSON lines for machines.

Three formats (``--log-format``):

- ``text``: ``2026-12-01 10:00:01 INFO    [site] message`` for a terminal or a file;
- ``json``: one JSON object a line, ``time`` in RFC 3339 UTC (``2026-12-01T10:00:01.123Z``);
- ``journal``: ``<6>[site] message``, the syslog priority prefix that journald (and
  ``systemd-cat``) maps to its own levels; no time, journald adds it. ``text`` switches to it
  by itself when stderr is the journal stream systemd names in ``JOURNAL_STREAM``.

Credentials in URLs are hidden in every format (ptm.urls). Warnings from third-party
libraries (``DeprecationWarning`` from docker, paramiko, cryptography…) go through logging too,
so a JSON log never gets a raw line of text; their deprecation notices only with ``-v``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from ptm.console import printable, printable_lines
from ptm.urls import redact_text

FIELDS = ("task", "decision", "reason")
AGENT_LOGGER = "ptm.agent."
LOG_FORMATS = ("text", "json", "journal")
WARNINGS_LOGGER = "py.warnings"
# syslog priorities (sd-daemon(3)): what journald stores as PRIORITY=.
PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def site_of(record: logging.LogRecord) -> str | None:
    """Agents log as ``ptm.agent.<site>``, so that several in one process stay apart."""
    return record.name.removeprefix(AGENT_LOGGER) if record.name.startswith(AGENT_LOGGER) else None


def rfc3339(timestamp: float) -> str:
    """``2026-12-01T10:00:01.123Z``: UTC, millisecond precision, the zone always written."""
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def priority_of(level: int) -> int:
    for threshold in sorted(PRIORITIES, reverse=True):
        if level >= threshold:
            return PRIORITIES[threshold]
    return PRIORITIES[logging.DEBUG]


def _message(record: logging.LogRecord) -> str:
    """The message with credentials of any URL in it hidden (git errors quote the URL)."""
    text = record.getMessage()
    if record.name == WARNINGS_LOGGER:
        # warnings.formatwarning's text ends with the offending source line; one line is enough.
        text = (text.strip().splitlines() or [""])[0]
    return redact_text(text)


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "site": site_of(record),
            "message": _message(record),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                document[field] = value
        if record.name == WARNINGS_LOGGER:
            document["source"] = "python-warning"
        if record.exc_info:
            document["traceback"] = self.formatException(record.exc_info)
        return json.dumps(document)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(site)s%(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        site = site_of(record)
        record.site = f"[{site}] " if site else ""
        # a task's reason or a log line may hold escape sequences: one safe line per message
        message = printable(record.getMessage())
        safe = logging.makeLogRecord({**vars(record), "msg": message, "args": None})
        return redact_text(super().format(safe))


class JournalFormatter(logging.Formatter):
    """``<N>`` before every line, so a multi-line message keeps its level in the journal."""

    def format(self, record: logging.LogRecord) -> str:
        site = site_of(record)
        message = printable_lines(_message(record))  # every line gets this record's priority
        text = f"[{site}] {message}" if site else message
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        prefix = f"<{priority_of(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def stderr_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True when systemd connected ``stream`` to the journal (``JOURNAL_STREAM=dev:inode``)."""
    value = (environ if environ is not None else dict(os.environ)).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        status = os.fstat(stream.fileno())
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (ValueError, OSError):
        return False


def formatter_for(log_format: str, stream: TextIO) -> logging.Formatter:
    if log_format == "json":
        return JsonLinesFormatter()
    if log_format == "journal" or stderr_is_journal(stream):
        return JournalFormatter()
    return TextFormatter()


class HideDeprecations(logging.Filter):
    """Deprecation notices of libraries are for their developers, not for a site admin, who
    cannot act on them; ``-v`` shows them (as log lines like any other warning)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "DeprecationWarning: " not in record.getMessage()


def route_warnings(*, verbose: bool = False, handler: logging.Handler | None = None) -> None:
    """Send Python warnings through logging (``py.warnings``): to ``handler``, or to stderr as
    text until a command configures its own log format."""
    logging.captureWarnings(True)
    logger = logging.getLogger(WARNINGS_LOGGER)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(TextFormatter())
    logger.handlers[:] = [handler]
    logger.filters[:] = [] if verbose else [HideDeprecations()]
    logger.propagate = False


def configure(*, log_format: str, verbose: bool = False, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter_for(log_format, handler.stream))
    root = logging.getLogger("ptm")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    route_warnings(verbose=verbose, handler=handler)
