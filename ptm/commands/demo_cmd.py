"""ptm demo"""

from __future__ import annotations

import argparse
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
    clone, registry = outcome.researcher_clone, outcome.registry
    say("")
    say(f"Everything is in {outcome.folder}. Look around:")
    say(f"  cd {clone}")
    signers = outcome.folder / "allowed_signers"
    say(
        f"  git -c gpg.ssh.allowedSignersFile={signers} log --show-signature -1 main"
        "   # the researcher's signed task"
    )
    say("  git fetch origin 'refs/heads/results/*:refs/remotes/origin/results/*'")
    say("  git log --format='%h %s' origin/results/hospital-a   # one site's ledger")
    say(f"  ptm status {result.task_id} --registry {clone}")
    say(f"  ls {outcome.folder}/sites   # each site's config, work dir and keys")
    say(f"Remove it with: rm -rf {outcome.folder}  (registry: {registry})")
