"""The one way ptm runs a subprocess."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ptm.errors import CommandFailed


def run(
    cmd: Sequence[str],
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> tuple[int, str, str]:
    """Run ``cmd``; return (returncode, stdout, stderr). Raise CommandFailed when check fails."""
    full_env = {**os.environ, **env} if env is not None else None
    proc = subprocess.run(
        list(cmd),
        cwd=cwd,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(list(cmd), proc.returncode, proc.stdout, proc.stderr)
    return proc.returncode, proc.stdout, proc.stderr
