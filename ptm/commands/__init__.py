"""One module per subcommand; each registers its parser and returns an exit code.

The table names each command's module and its one-line help, so that ``ptm --help`` and
``ptm --version`` import no command module, and ``ptm COMMAND`` imports only its own (the
libraries behind the others, GitPython, docker, paramiko and watchdog, are slow to import).
tests/test_startup.py checks that each help here is the one its module registers.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "ptm.commands.demo_cmd",
        "a whole federation on this machine: registry, three hospitals, one study",
    ),
    "registry": ("ptm.commands.registry_cmd", "create a task registry, list its sites' keys"),
    "task": ("ptm.commands.task_cmd", "write and submit tasks (researchers)"),
    "validate": (
        "ptm.commands.validate_cmd",
        "check a registry tree or one task folder (for registry CI)",
    ),
    "status": ("ptm.commands.status_cmd", "task-by-site states from all result branches"),
    "results": ("ptm.commands.results_cmd", "collect a task's results from every site"),
    "cancel": ("ptm.commands.cancel_cmd", "cancel a task"),
    "agent": ("ptm.commands.agent_cmd", "the site agent (site admins)"),
    "policy": ("ptm.commands.policy_cmd", "what a site's policy says of a task"),
    "audit": (
        "ptm.commands.audit_cmd",
        "the registry's history: who asked, what ran where, and who signed each step",
    ),
    "sftp": ("ptm.commands.sftp_cmd", "the trusted third party's SFTP file service"),
}


def command_module(name: str) -> ModuleType:
    return import_module(COMMANDS[name][0])
