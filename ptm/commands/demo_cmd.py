"""ptm demo"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptm.api import Registry
from ptm.commands.status_cmd import overview_text
from ptm.console import say
from ptm.errors import PtmError

if TYPE_CHECKING:
    from ptm.demo import DemoOutcome


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "demo",
        help="a whole federation on this machine: registry, three hospitals, one study",
        description="Create a bare registry, three sites with synthetic patients and their own "
        "configs and keys, start their agents, submit the federated-mean example as a signed "
        "researcher commit, and print the per-site and combined results. Needs a reachable "
        "Docker engine. Everything stays in one folder for you to explore.",
    )
    parser.add_argument(
        "--folder",
        type=Path,
        metavar="DIR",
        help="where to build it (a new or empty folder; default: a temp folder)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300,
        metavar="SECONDS",
        help="how long to wait for the sites (default 300)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the agents' logs")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: the demo brings the Docker SDK and the examples, which no other command
    # needs, and every ptm command would otherwise pay for importing them.
    from ptm.demo import agent_logs, run_demo

    folder: Path = args.folder or Path(tempfile.mkdtemp(prefix="ptm-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise PtmError(f"{folder}: not empty; ptm demo needs a new or empty folder")
    agent_logs(verbose=args.verbose)
    outcome = run_demo(folder, say=say, timeout=args.timeout)
    _report(outcome)
    return 0 if not outcome.result.failures else 1


def _report(outcome: DemoOutcome) -> None:
    from ptm.examples.federated_mean import format_result

    result = outcome.result
    say("")
    say(f"Results of {result.task_id} (each site sent only a count and a sum):")
    say(format_result(result))
    if result.mean is not None:
        difference = abs(result.mean - outcome.pooled_mean)
        say(
            f"Check: the mean over all patients in one place is {outcome.pooled_mean:.4f} "
            f"(difference {difference:.2e}); only a demo can compute it, a study cannot."
        )
    say("")
    say("ptm status:")
    say(overview_text(Registry.open(outcome.researcher_clone).overview()))
    _next_steps(outcome)


def _next_steps(outcome: DemoOutcome) -> None:
    folder, clone = outcome.folder, outcome.researcher_clone
    say("")
    say(f"Everything is in {folder}:")
    say(f"  {clone}   the researcher's clone: signs with keys/researcher, holds config.yaml")
    say(f"  {outcome.registry}   the registry (bare); sites/ in it lists the three sites")
    say(f"  {folder}/sites/<site>.yaml   each site's agent config (work dir next to it)")
    say(f"  {folder}/keys/   researcher (signs tasks), hospital-* (sign results); .pub beside")
    say(f"  {folder}/allowed_signers   the researcher's key, as the sites trust it")
    say("The agents stopped with the demo. Go on as the README's 'For researchers' shows:")
    say(f"  cd {clone}")
    say("  ptm task new mean-age-2 --image ptm-examples/federated-mean:latest --site hospital-a \\")
    say("      --site hospital-b --site hospital-c --config config.yaml --timeout 120")
    say("  ptm task submit mean-age-2")
    say("  for site in hospital-a hospital-b hospital-c; do")
    say("      ptm agent once --config ../sites/$site.yaml; done   # each site runs one cycle")
    say("  ptm results mean-age-2 --out results")
    path_hint = _path_hint()
    if path_hint:
        say(path_hint)
    say(f"Remove it all with: rm -rf {folder}")


def _path_hint() -> str | None:
    """How to reach this ptm by name, when the shell would not find it (or another one)."""
    here = Path(sys.executable).parent
    found = shutil.which("ptm")
    if found is not None and Path(found).parent.resolve() == here.resolve():
        return None
    activate = here / "activate"
    how = f". {activate}" if activate.is_file() else f'export PATH="{here}:$PATH"'
    return f"This ptm is not the one on your PATH; first run: {how}"
