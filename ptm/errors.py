"""ptm's errors: one family that the command line turns into a message and exit code 1.

Anything else escaping a command is a bug (exit 3). Third-party exceptions (git, docker,
paramiko) are translated into these at the module that owns the library, with ``raise … from``.

    PtmError                 a user-facing problem, with one clear message
    ├── InvalidDocument      a YAML/JSON document broke a rule (carries every Problem found)
    ├── ConfigError          a site or service config is unusable (bad regex, missing key file…)
    ├── RegistryError        git said no: unreachable remote, rejected push, bad repository
    │   └── TamperingDetected  the tasks branch was rewritten or an acted-on task changed
    ├── SignatureRequired    unsigned work was not pushed: the registry's sites run only signed
    │                        tasks (registry.yaml: require_signed_tasks) and no key is set up
    ├── CommandFailed        a subprocess exited non-zero (command, code, output indented)
    ├── CommandTimedOut      a subprocess outlived its deadline, or the process was stopping
    ├── RuntimeUnavailable   no container engine could be reached
    ├── ContainerError       the engine refused to pull, create or run a container
    ├── OutputRejected       a container's output broke a safety rule (symlink, size, name…)
    └── DeliveryError        an SFTP transfer or the SFTP service failed
"""

from __future__ import annotations

from dataclasses import dataclass


class PtmError(Exception):
    """A problem the user can act on; its message is shown as is."""


@dataclass(frozen=True)
class Problem:
    """One broken rule in one document: which file, which field (JSON path) and which rule."""

    source: str
    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.path}: {self.message} [{self.rule}]"


class InvalidDocument(PtmError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in problems))


class ConfigError(PtmError):
    pass


class RegistryError(PtmError):
    pass


class TamperingDetected(RegistryError):
    pass


class SignatureRequired(PtmError):
    """A submit or cancel was refused before anything was committed: it would be unsigned, and
    the registry's sites run only signed tasks, so every site would reject (or ignore) it.
    ``options`` are how the caller signs and how it pushes unsigned anyway: a command's flags
    (``--sign-key KEY``, ``--allow-unsigned``) or the Python API's keywords."""

    CONSEQUENCE = {
        "submitted": "every site would reject it and the id would be used up",
        "cancelled": "every site would ignore the cancel",
    }

    def __init__(self, task_id: str, *, action: str, options: tuple[str, str]) -> None:
        self.task_id = task_id
        self.action = action
        self.options = options
        super().__init__(self._describe())

    def _describe(self) -> str:
        sign, anyway = self.options
        return (
            f"tasks/{self.task_id}: not {self.action}: no signing key is set up, and this "
            "registry's sites run only signed tasks (registry.yaml: require_signed_tasks), so "
            f"{self.CONSEQUENCE[self.action]}. Set up SSH signing once with "
            "'git config --global gpg.format ssh' and 'git config --global user.signingkey "
            f"~/.ssh/id_ed25519.pub' (or pass {sign}); to push it unsigned anyway, pass {anyway}."
        )


class CommandFailed(PtmError):
    def __init__(self, cmd: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.cmd = tuple(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(self._describe())

    def _describe(self) -> str:
        lines = [f"command failed (exit {self.returncode}): {' '.join(self.cmd)}"]
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text.strip():
                lines.append(f"  {name}:")
                lines.extend(f"    {line}" for line in text.rstrip().splitlines())
        return "\n".join(lines)


class CommandTimedOut(PtmError):
    """A bounded subprocess (``process.run_bounded``) was stopped: its overall limit passed,
    or ptm itself was shutting down (``process.wind_down``)."""

    def __init__(self, cmd: list[str], limit: float, *, stopping: bool) -> None:
        self.cmd = tuple(cmd)
        self.limit = limit
        self.stopping = stopping
        why = "ptm is stopping" if stopping else f"it did not finish within {limit:g} s"
        super().__init__(f"command stopped ({why}): {' '.join(self.cmd)}")


class RuntimeUnavailable(PtmError):
    pass


class ContainerError(PtmError):
    pass


class OutputRejected(PtmError):
    pass


class DeliveryError(PtmError):
    pass
