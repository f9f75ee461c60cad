"""``ptm agent once`` as an admin's cron job or first try would run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptm.main import main
from tests.agent_support import Researcher, remote_status, write_site_config

pytestmark = pytest.mark.docker


def test_once_runs_the_new_task_then_says_when_there_is_nothing_to_do(
    bare_registry: Path, tmp_path: Path, test_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Researcher(bare_registry, tmp_path / "r").submit("cron", "true")
    config = str(write_site_config(tmp_path, "hospital-a", bare_registry))
    assert main(["agent", "once", "--config", config]) == 0
    assert remote_status(bare_registry, "cron")["state"] == "completed"  # type: ignore[index]
    first = capsys.readouterr().out
    assert "nothing to do" not in first
    assert main(["agent", "once", "--config", config]) == 0
    assert "hospital-a: nothing to do (no new task, nothing to push)" in capsys.readouterr().out
