"""Agent logs: RFC 3339 times, journald priorities, warnings as log lines, no credentials."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from ptm import logs
from tests.agent_support import write_site_config

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    logs.configure(log_format="text")  # leave no handler on a closed stream behind
    logging.captureWarnings(False)


def test_json_lines_carry_an_rfc3339_time_with_zone(captured: io.StringIO) -> None:
    logs.configure(log_format="json", stream=captured)
    logging.getLogger("ptm.agent.hospital-a").info("hello", extra={"task": "t1"})
    line = json.loads(captured.getvalue())
    assert RFC3339_UTC.fullmatch(line["time"]), line["time"]
    assert (line["site"], line["task"], line["message"]) == ("hospital-a", "t1", "hello")


def test_rfc3339_is_utc() -> None:
    assert logs.rfc3339(0.25) == "1970-01-01T00:00:00.250Z"


def warn_as_paramiko(category: type[Warning], text: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit(
            text,
            category,
            filename="/usr/lib/python3/site-packages/paramiko/transport.py",
            lineno=259,
            module="paramiko.transport",
        )


def test_third_party_warnings_become_json_lines(captured: io.StringIO) -> None:
    logs.configure(log_format="json", stream=captured)
    warn_as_paramiko(UserWarning, "unknown cipher")
    warn_as_paramiko(DeprecationWarning, "TripleDES has been moved")
    lines = [json.loads(text) for text in captured.getvalue().splitlines()]
    assert len(lines) == 1  # deprecation notices are for the library's developers
    assert lines[0]["level"] == "warning" and lines[0]["source"] == "python-warning"
    assert "UserWarning: unknown cipher" in lines[0]["message"]


def test_verbose_shows_deprecations_as_json_lines_too(captured: io.StringIO) -> None:
    logs.configure(log_format="json", verbose=True, stream=captured)
    warn_as_paramiko(DeprecationWarning, "TripleDES has been moved")
    (line,) = [json.loads(text) for text in captured.getvalue().splitlines()]
    assert "DeprecationWarning: TripleDES has been moved" in line["message"]


def test_journal_format_prefixes_every_line_with_its_priority(captured: io.StringIO) -> None:
    logs.configure(log_format="journal", stream=captured)
    log = logging.getLogger("ptm.agent.hospital-a")
    log.info("task t1 completed")
    log.warning("push failed")
    log.error("halted:\nsecond line")
    assert captured.getvalue().splitlines() == [
        "<6>[hospital-a] task t1 completed",
        "<4>[hospital-a] push failed",
        "<3>[hospital-a] halted:",
        "<3>second line",
    ]


def test_text_becomes_journal_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "journal", "w") as stream:
        status = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert logs.stderr_is_journal(stream, env)
        assert not logs.stderr_is_journal(stream, {"JOURNAL_STREAM": "1:2"})
        assert not logs.stderr_is_journal(stream, {})


@pytest.mark.parametrize("log_format", logs.LOG_FORMATS)
def test_no_format_prints_credentials_of_a_url(captured: io.StringIO, log_format: str) -> None:
    logs.configure(log_format=log_format, stream=captured)
    logging.getLogger("ptm.agent.a").warning(
        "git failed: fatal: unable to access 'https://site-a:s3cr3t-token@git.example.org/r/'"
    )
    assert "s3cr3t-token" not in captured.getvalue()
    assert "https://site-a:***@git.example.org/r/" in captured.getvalue()


@pytest.mark.docker
def test_agent_run_logs_start_and_stop_as_json_lines_only(
    bare_registry: Path, tmp_path: Path
) -> None:
    config = write_site_config(tmp_path, "hospital-a", bare_registry)
    command = ["agent", "run", "--config", str(config), "--log-format", "json"]
    agent = subprocess.Popen(
        [sys.executable, "-W", "always", "-m", "ptm", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "always"},
    )
    assert agent.stderr is not None
    first = json.loads(agent.stderr.readline())
    time.sleep(1.5)
    agent.send_signal(signal.SIGTERM)
    stdout, rest = agent.communicate(timeout=60)
    assert agent.returncode == 0, rest
    lines = [first] + [json.loads(text) for text in rest.splitlines()]  # raw text would fail
    assert stdout == ""
    assert all(RFC3339_UTC.fullmatch(line["time"]) for line in lines)
    assert first["decision"] == "started" and first["site"] == "hospital-a"
    assert "ptm agent 0.1.0 started for site hospital-a" in first["message"]
    assert f"registry {bare_registry} branch main" in first["message"]
    assert "1 allowed image rule(s), unsigned tasks accepted" in first["message"]
    assert lines[-1]["decision"] == "stopped" and "SIGTERM" in lines[-1]["message"]


def test_journal_lines_show_escape_sequences_escaped(captured: io.StringIO) -> None:
    logs.configure(log_format="journal", stream=captured)
    logging.getLogger("ptm.agent.hospital-a").warning("task t1 rejected: \x1b[2Jgone")
    assert captured.getvalue() == "<4>[hospital-a] task t1 rejected: \\x1b[2Jgone\n"
