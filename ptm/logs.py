"""Agent logs: one readable line per decision for a site admin, or JSON lines for machines."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

FIELDS = ("task", "decision", "reason")
AGENT_LOGGER = "ptm.agent."


def site_of(record: logging.LogRecord) -> str | None:
    """Agents log as ``ptm.agent.<site>``, so that several in one process stay apart."""
    return record.name.removeprefix(AGENT_LOGGER) if record.name.startswith(AGENT_LOGGER) else None


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "site": site_of(record),
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                document[field] = value
        return json.dumps(document)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(site)s%(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        site = site_of(record)
        record.site = f"[{site}] " if site else ""
        return super().format(record)


def configure(*, log_format: str, verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger("ptm")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
