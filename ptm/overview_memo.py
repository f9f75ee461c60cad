"""What earlier overviews read, kept in the clone so the next one reads only what changed.

Every key names something immutable: a tree listing is kept under the commit it lists, what
was read of a file under the file's blob id. An entry is never stale, only unused; each save
keeps just the entries the last overview used, so the memo does not grow with history. It lives
in the clone's ``.git`` (git ignores files it does not know), is written atomically, and is
simply ignored when unreadable or of another format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MEMO_NAME = "ptm-overview-memo.json"
MEMO_FORMAT = 3  # raise when what is kept, or how files are read, changes

Reading = Mapping[str, Any]  # {"fields": {…}} or {"problem": "…"}


class OverviewMemo:
    """A working memo for one overview: look up, add, then ``save``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        listings, readings = _load(path)
        self._listings: dict[str, str] = listings
        self._readings: dict[str, Reading] = readings
        self._used_listings: set[str] = set()
        self._used_readings: set[str] = set()
        self._added = False

    def listing(self, key: str) -> str | None:
        if key in self._listings:
            self._used_listings.add(key)
            return self._listings[key]
        return None

    def add_listing(self, key: str, text: str) -> None:
        self._listings[key] = text
        self._used_listings.add(key)
        self._added = True

    def missing_readings(self, oids: set[str]) -> list[str]:
        return sorted(oids - set(self._readings))

    def add_reading(self, oid: str, reading: Reading) -> None:
        self._readings[oid] = reading
        self._added = True

    def readings(self, oids: set[str]) -> dict[str, Reading]:
        self._used_readings.update(oids)
        return {oid: self._readings[oid] for oid in oids if oid in self._readings}

    def save(self) -> None:
        """Write the entries used since loading, if anything was added or dropped."""
        dropped = (
            len(self._listings)
            + len(self._readings)
            - len(self._used_listings)
            - len(self._used_readings)
        )
        if self.path is None or not (self._added or dropped):
            return
        document = {
            "format": MEMO_FORMAT,
            "listings": {k: self._listings[k] for k in sorted(self._used_listings)},
            "readings": {k: self._readings[k] for k in sorted(self._used_readings)},
        }
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        try:
            partial.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
            partial.replace(self.path)
        except OSError:  # a read-only clone: no memo, only slower next time
            partial.unlink(missing_ok=True)


def memo_path(root: Path) -> Path | None:
    """Where the overview keeps its memo for the clone at ``root`` (None when it cannot)."""
    git_dir = root / ".git"
    return git_dir / MEMO_NAME if git_dir.is_dir() else None


def _load(path: Path | None) -> tuple[dict[str, str], dict[str, Reading]]:
    if path is None:
        return {}, {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, {}  # none yet, or damaged: start afresh
    if not isinstance(document, dict) or document.get("format") != MEMO_FORMAT:
        return {}, {}
    listings = document.get("listings")
    readings = document.get("readings")
    if not isinstance(listings, dict) or not isinstance(readings, dict):
        return {}, {}
    return (
        {k: v for k, v in listings.items() if isinstance(v, str)},
        {k: v for k, v in readings.items() if isinstance(v, dict)},
    )
