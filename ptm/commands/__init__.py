"""One module per subcommand; each registers its parser and returns an exit code.

The table names each command's module and its one-line help, so that ``ptm --help`` and
``ptm --version`` import no command module, and ``ptm COMMAND`` imports only its own (the
libraries behind the others, GitPython, docker, paramiko and watchdog, are slow to import).
tests/test_startup.py checks that each help here is the one its module registers.

The base install carries only what researchers, auditors and registry CI use; the other
libraries come with setup.py's extras, and a command that needs a missing one says which.
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


DISTRIBUTION = "ptm-health-train"
# The extra (setup.py's extras_require) that brings each optional library.
EXTRA_OF_LIBRARY: dict[str, str] = {
    "docker": "agent",
    "watchdog": "agent",
    "paramiko": "sftp",
    "pyrage": "age",
}
# Commands whose whole use is a site's or the third party's: the extra they name, whichever of
# its libraries is missing (an agent lacking pyrage needs the agent extra, not just age).
EXTRA_OF_COMMAND: dict[str, str] = {"agent": "agent", "demo": "agent", "sftp": "sftp"}


def missing_extra(command: str, missing: ModuleNotFoundError) -> str | None:
    """The extra to install when ``command`` failed to import ``missing.name``; None when that
    module comes with no extra (a broken install or a bug, not a choice of extras)."""
    library = (missing.name or "").split(".")[0]
    if library not in EXTRA_OF_LIBRARY:
        return None
    return EXTRA_OF_COMMAND.get(command, EXTRA_OF_LIBRARY[library])


def install_hint(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"
