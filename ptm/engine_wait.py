"""Waiting out a container engine that does not answer: an outage delays a task, never fails it.

``EngineWait.call`` retries an engine call that raised ``RuntimeUnavailable`` with backoff (the
poll interval, doubling up to ten minutes), until it answers or the agent stops. Only causes
inside the task fail it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from ptm.errors import PtmError, RuntimeUnavailable

T = TypeVar("T")
MAX_DELAY_S = 600.0


class AgentStopping(PtmError):
    """The agent is shutting down while a task waited for the engine; the task stays open."""


class EngineWait:
    def __init__(self, stopping: threading.Event, first_delay: float, log: logging.Logger) -> None:
        self.stopping = stopping
        self.first_delay = max(0.1, first_delay)
        self.log = log

    def call(self, what: str, task_id: str, action: Callable[[], T]) -> T:
        delay = self.first_delay
        while True:
            try:
                return action()
            except RuntimeUnavailable as exc:
                self.log.warning(
                    "task %s waits for the container engine (%s), retrying in %.0fs: %s",
                    task_id,
                    what,
                    delay,
                    exc,
                    extra={"task": task_id, "decision": "engine-unavailable"},
                )
            if self.stopping.wait(delay):
                raise AgentStopping(f"task {task_id}: the agent stopped while {what} waited")
            delay = min(delay * 2, MAX_DELAY_S)
