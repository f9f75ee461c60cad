"""One module per subcommand; each registers its parser and returns an exit code."""

from __future__ import annotations

from types import ModuleType

from ptm.commands import (
    agent_cmd,
    audit_cmd,
    cancel_cmd,
    demo_cmd,
    policy_cmd,
    registry_cmd,
    results_cmd,
    sftp_cmd,
    status_cmd,
    task_cmd,
    validate_cmd,
)

COMMAND_MODULES: tuple[ModuleType, ...] = (
    demo_cmd,
    registry_cmd,
    task_cmd,
    validate_cmd,
    status_cmd,
    results_cmd,
    cancel_cmd,
    agent_cmd,
    policy_cmd,
    audit_cmd,
    sftp_cmd,
)
