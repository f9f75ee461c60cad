"""Small command-line promises: a bare repository is a registry, errors are safe to look at."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptm.main import main
from tests.agent_support import Researcher


def test_audit_and_status_accept_a_bare_repository_as_registry(
    bare_registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Researcher(bare_registry, tmp_path / "r").submit("bare-ok", "true")
    assert main(["status", "--registry", str(bare_registry)]) == 0
    assert "bare-ok" in capsys.readouterr().out
    main(["audit", "--registry", str(bare_registry)])
    captured = capsys.readouterr()
    assert "bare-ok" in captured.out and "not inside a registry clone" not in captured.err


def test_an_error_message_never_carries_escape_sequences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = tmp_path / "site\x1b[2J.yaml"
    hostile.write_text("ptm: 1\nsite: \x1b[31mred\n")
    assert main(["agent", "check", "--config", str(hostile)]) != 0
    captured = capsys.readouterr()
    assert "\x1b" not in captured.err and "\x1b" not in captured.out
    assert main(["policy", "explain", "t1", "--config", str(hostile)]) == 1
    assert "\x1b" not in capsys.readouterr().err
