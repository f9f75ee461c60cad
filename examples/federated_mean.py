"""Federated mean: each site sends the count and the sum of one column, never a row.

    from ptm.api import Registry
    from examples.central import Federation
    from examples.federated_mean import run_federated_mean

    federation = Federation(Registry.open("/srv/git/consortium.git"), sites=("a", "b", "c"))
    result = run_federated_mean(federation, column="age", task_id="mean-age-1")
    print(result.mean, [s.mean for s in result.summaries], result.failures)

The site side is ``federated-mean/app/`` (sh + awk) in the image ``IMAGE``. Command line:
``python -m examples.federated_mean REGISTRY --site a --site b --column age --task-id ID``
(or ``examples/federated-mean/central.py``, the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from ptm.errors import PtmError

from .central import (
    Federation,
    SiteOutcome,
    StudyError,
    add_federation_options,
    federation_from_args,
    run_task,
)

IMAGE = "ptm-examples/federated-mean:latest"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class SiteSummary:
    site: str
    count: int
    total: float
    missing: int

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass(frozen=True)
class SiteFailure:
    site: str
    state: str
    explanation: str  # state, reason and the end of the site's log


@dataclass(frozen=True)
class MeanResult:
    task_id: str
    column: str
    summaries: tuple[SiteSummary, ...]  # the sites that answered, by name
    failures: tuple[SiteFailure, ...]  # the sites that did not (rejected, failed…)

    @property
    def count(self) -> int:
        return sum(s.count for s in self.summaries)

    @property
    def total(self) -> float:
        return sum(s.total for s in self.summaries)

    @property
    def mean(self) -> float | None:
        """The combined mean over every answering site (None when no value was counted)."""
        return self.total / self.count if self.count else None


def run_federated_mean(
    federation: Federation, *, column: str, task_id: str, image: str = IMAGE
) -> MeanResult:
    """Ask every site for count and sum of ``column``; combine what the sites answered."""
    outcomes = run_task(
        federation,
        task_id,
        image=image,
        config={"column": column},
        description=f"Federated mean of {column}: each site returns count and sum only",
    )
    summaries: list[SiteSummary] = []
    failures: list[SiteFailure] = []
    for site in sorted(outcomes):
        outcome = outcomes[site]
        if outcome.completed:
            summaries.append(parse_summary(outcome))
        else:
            failures.append(SiteFailure(site, outcome.state, outcome.explain()))
    return MeanResult(task_id, column, tuple(summaries), tuple(failures))


def parse_summary(outcome: SiteOutcome) -> SiteSummary:
    """A site's summary.json, checked: the right site, a whole count, finite numbers."""
    try:
        document = json.loads(outcome.text(SUMMARY_FILE))
        count, total, missing = document["count"], document["sum"], document.get("missing", 0)
        valid = (
            document.get("site") == outcome.site
            and all(isinstance(n, int) and n >= 0 for n in (count, missing))
            and isinstance(total, (int, float))
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise StudyError(f"{outcome.site}: unreadable {SUMMARY_FILE}: {exc}") from None
    if not valid:
        raise StudyError(f"{outcome.site}: {SUMMARY_FILE} does not hold site, count and sum")
    return SiteSummary(outcome.site, count, float(total), missing)


def format_result(result: MeanResult) -> str:
    """The table the command line prints."""
    lines = [f"{'site':<16} {'n':>7} {'missing':>8} {'mean ' + result.column:>14}"]
    for s in result.summaries:
        lines.append(f"{s.site:<16} {s.count:>7} {s.missing:>8} {_number(s.mean):>14}")
    missing = sum(s.missing for s in result.summaries)
    lines.append(f"{'combined':<16} {result.count:>7} {missing:>8} {_number(result.mean):>14}")
    for failure in result.failures:
        lines.append(f"{failure.site}: no result: {failure.explanation}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="federated-mean", description="Submit a federated mean and print what sites answer."
    )
    add_federation_options(parser)
    parser.add_argument("--column", required=True, help="the column to average")
    parser.add_argument("--task-id", required=True, help="a new task id")
    parser.add_argument("--image", default=IMAGE)
    args = parser.parse_args(argv)
    try:
        federation = federation_from_args(args)
        result = run_federated_mean(
            federation, column=args.column, task_id=args.task_id, image=args.image
        )
    except PtmError as exc:
        print(f"federated-mean: {exc}", file=sys.stderr)
        return 1
    print(format_result(result))
    return 0 if result.summaries else 1


if __name__ == "__main__":
    sys.exit(main())
