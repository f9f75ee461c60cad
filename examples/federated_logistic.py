"""Federated logistic regression by Newton-Raphson: one task per round, until the step is tiny.

Round k is task ``<prefix>-r<k>`` with config ``{round, outcome, predictors, coefficients}``.
Each site returns, for those coefficients, the gradient and the information matrix (minus the
Hessian) of its log-likelihood; the central side adds them up, solves for the Newton step and
posts round k+1 with the new coefficients. It stops when the largest step is below
``tolerance`` (converged) or after ``max_rounds``. Sites see coefficients, the central side sees
sums; nobody sees a row.

    from examples.central import Federation
    from examples.federated_logistic import run_federated_logistic

    fit = run_federated_logistic(federation, prefix="smoking-1", outcome="event",
                                 predictors=("age", "bmi", "smoker"))
    print(fit.converged, fit.coefficients, fit.standard_errors)

The site side is ``iterative/app/`` (sh + awk) in the image ``IMAGE``. Command line:
``python -m examples.federated_logistic REGISTRY --site a --prefix ID --outcome event
--predictor age --predictor bmi`` (or ``examples/iterative/central.py``, the same).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ptm.errors import PtmError

from .central import (
    Federation,
    SiteOutcome,
    StudyError,
    add_federation_options,
    federation_from_args,
    run_task,
)
from .newton import NewtonTerms, Vector, newton_step, standard_errors
from .pooled import pooled_logistic_fit
from .synthetic import site_files

IMAGE = "ptm-examples/iterative:latest"
TERMS_FILE = "newton.json"


@dataclass(frozen=True)
class Round:
    number: int
    task_id: str
    coefficients: Vector  # what the sites were sent
    terms: NewtonTerms  # summed over the sites
    step: Vector  # the Newton step taken after this round
    sites: tuple[str, ...]

    @property
    def step_size(self) -> float:
        return max(abs(s) for s in self.step)


@dataclass(frozen=True)
class LogisticFit:
    names: tuple[str, ...]  # "(intercept)", then the predictors
    coefficients: Vector
    standard_errors: Vector
    rounds: tuple[Round, ...]
    converged: bool

    @property
    def count(self) -> int:
        return self.rounds[-1].terms.count


RoundCallback = Callable[[Round], None]


def run_federated_logistic(
    federation: Federation,
    *,
    prefix: str,
    outcome: str,
    predictors: Sequence[str],
    image: str = IMAGE,
    tolerance: float = 1e-8,
    max_rounds: int = 12,
    on_round: RoundCallback | None = None,
) -> LogisticFit:
    """Run rounds ``<prefix>-r1``, ``-r2``… until the largest Newton step is below ``tolerance``.

    Every round needs every site: a site that fails or drops out stops the study with a
    StudyError (continuing without it would silently change the population). With ``*``, the
    sites that answered round 1 are the study's sites for every later round.
    """
    beta: Vector = (0.0,) * (len(predictors) + 1)
    sites: tuple[str, ...] = ()
    rounds: list[Round] = []
    for number in range(1, max_rounds + 1):
        task_id = f"{prefix}-r{number}"
        config = {
            "round": number,
            "outcome": outcome,
            "predictors": list(predictors),
            "coefficients": list(beta),
        }
        outcomes = run_task(
            federation,
            task_id,
            image=image,
            config=config,
            description=f"Logistic regression of {outcome}, Newton round {number}",
            wait_for=sites,
        )
        sites = sites or tuple(sorted(outcomes))
        terms = combine_site_terms(outcomes, sites, number, len(beta))
        step = newton_step(terms)
        done = Round(number, task_id, beta, terms, step, sites)
        rounds.append(done)
        beta = tuple(b + s for b, s in zip(beta, step, strict=True))
        if on_round is not None:
            on_round(done)
        if done.step_size < tolerance:
            break
    converged = rounds[-1].step_size < tolerance
    names = ("(intercept)", *predictors)
    errors = standard_errors(rounds[-1].terms.information)
    return LogisticFit(names, beta, errors, tuple(rounds), converged)


def combine_site_terms(
    outcomes: dict[str, SiteOutcome], sites: Sequence[str], number: int, size: int
) -> NewtonTerms:
    missing = [s for s in sites if s not in outcomes or not outcomes[s].completed]
    if missing or not sites:
        details = "".join(
            f"\n  {s}: {outcomes[s].explain() if s in outcomes else 'no answer'}" for s in missing
        )
        raise StudyError(
            f"round {number}: no result from {', '.join(missing) or 'any site'}{details}"
        )
    parts = [parse_terms(outcomes[s], number, size) for s in sites]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def parse_terms(outcome: SiteOutcome, number: int, size: int) -> NewtonTerms:
    """A site's newton.json, checked: this round, the right shapes, finite numbers."""
    try:
        document = json.loads(outcome.text(TERMS_FILE))
        terms = NewtonTerms(
            int(document["count"]),
            int(document["skipped"]),
            float(document["loglik"]),
            tuple(float(g) for g in document["gradient"]),
            tuple(tuple(float(v) for v in row) for row in document["information"]),
        )
        right_round = document["round"] == number and document["site"] == outcome.site
    except (ValueError, KeyError, TypeError) as exc:
        raise StudyError(f"{outcome.site}: unreadable {TERMS_FILE}: {exc}") from None
    shaped = len(terms.gradient) == size and all(len(r) == size for r in terms.information)
    finite = all(math.isfinite(v) for v in (*terms.gradient, *sum(terms.information, ())))
    if not (right_round and shaped and finite):
        raise StudyError(f"{outcome.site}: {TERMS_FILE} is not round {number}'s {size} terms")
    return terms


# -- command line -------------------------------------------------------------------------------


def format_round(done: Round) -> str:
    coefficients = " ".join(f"{c:+.6f}" for c in done.coefficients)
    return (
        f"round {done.number:>2} ({done.task_id}): n={done.terms.count} "
        f"loglik={done.terms.loglik:.6f} step={done.step_size:.2e} at [{coefficients}]"
    )


def format_fit(fit: LogisticFit) -> str:
    state = "converged" if fit.converged else "did NOT converge"
    lines = [
        f"{state} after {len(fit.rounds)} rounds, n={fit.count}",
        f"{'coefficient':<14} {'estimate':>14} {'std. error':>12}",
    ]
    for name, value, error in zip(fit.names, fit.coefficients, fit.standard_errors, strict=True):
        lines.append(f"{name:<14} {value:>14.8f} {error:>12.6f}")
    return "\n".join(lines)


def format_pooled_comparison(
    fit: LogisticFit, data_dir: Path, outcome: str, predictors: Sequence[str]
) -> str:
    """The same model fitted on every site's rows in one place (synthetic data only)."""
    files = site_files(data_dir)
    pooled, _ = pooled_logistic_fit(files.values(), outcome, predictors)
    lines = [f"pooled fit of {', '.join(files)} in one place (a real study cannot do this):"]
    for name, federated, together in zip(fit.names, fit.coefficients, pooled, strict=True):
        lines.append(
            f"{name:<14} {together:>14.8f}   federated - pooled = {federated - together:+.1e}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="federated-logistic",
        description="Fit a logistic regression across sites, one Newton round per task.",
    )
    add_federation_options(parser)
    parser.add_argument("--prefix", required=True, help="task ids are PREFIX-r1, PREFIX-r2…")
    parser.add_argument("--outcome", required=True, help="the 0/1 column to model")
    parser.add_argument("--predictor", action="append", required=True, dest="predictors")
    parser.add_argument("--image", default=IMAGE)
    parser.add_argument("--tolerance", type=float, default=1e-8)
    parser.add_argument("--max-rounds", type=int, default=12)
    parser.add_argument(
        "--compare-pooled",
        type=Path,
        metavar="DATA_DIR",
        help="synthetic data only: also fit DATA_DIR/<site>/patients.csv pooled",
    )
    args = parser.parse_args(argv)
    try:
        federation = federation_from_args(args)
        fit = run_federated_logistic(
            federation,
            prefix=args.prefix,
            outcome=args.outcome,
            predictors=args.predictors,
            image=args.image,
            tolerance=args.tolerance,
            max_rounds=args.max_rounds,
            on_round=lambda done: print(format_round(done), flush=True),
        )
    except PtmError as exc:
        print(f"federated-logistic: {exc}", file=sys.stderr)
        return 1
    print(format_fit(fit))
    if args.compare_pooled is not None:
        print(format_pooled_comparison(fit, args.compare_pooled, args.outcome, args.predictors))
    return 0 if fit.converged else 1


if __name__ == "__main__":
    sys.exit(main())
