"""The same statistics computed with every row in one place: only possible with synthetic data.

A real study cannot do this (pooling the rows is what federation avoids); the examples use it
to show, and the tests to check, that the federated answer is the pooled answer. The rules
match the site scripts: empty and NA values are missing; a logistic row with a missing value
in a used column is skipped.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from .newton import NewtonTerms, Vector, newton_step, standard_errors

MISSING = frozenset({"", "NA"})


def read_rows(paths: Iterable[Path]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in paths:
        with path.open(newline="", encoding="utf-8") as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def pooled_mean(paths: Iterable[Path], column: str) -> float:
    values = [float(row[column]) for row in read_rows(paths) if row[column].strip() not in MISSING]
    return math.fsum(values) / len(values)


def design(
    paths: Iterable[Path], outcome: str, predictors: Sequence[str]
) -> tuple[list[Vector], list[float]]:
    """Rows (intercept first) and outcomes, complete cases only."""
    xs: list[Vector] = []
    ys: list[float] = []
    for row in read_rows(paths):
        used = [row[outcome], *(row[p] for p in predictors)]
        if any(value.strip() in MISSING for value in used):
            continue
        xs.append((1.0, *(float(row[p]) for p in predictors)))
        ys.append(float(row[outcome]))
    return xs, ys


def logistic_terms(xs: Sequence[Vector], ys: Sequence[float], beta: Vector) -> NewtonTerms:
    size = len(beta)
    gradient = [0.0] * size
    information = [[0.0] * size for _ in range(size)]
    loglik = 0.0
    for x, y in zip(xs, ys, strict=True):
        eta = sum(b * v for b, v in zip(beta, x, strict=True))
        mu = 1.0 / (1.0 + math.exp(-eta))
        for a in range(size):
            gradient[a] += (y - mu) * x[a]
            for b in range(size):
                information[a][b] += mu * (1.0 - mu) * x[a] * x[b]
        loglik += y * eta - (
            eta + math.log1p(math.exp(-eta)) if eta > 0 else math.log1p(math.exp(eta))
        )
    return NewtonTerms(len(ys), 0, loglik, tuple(gradient), tuple(map(tuple, information)))


def pooled_logistic_fit(
    paths: Iterable[Path],
    outcome: str,
    predictors: Sequence[str],
    *,
    tolerance: float = 1e-12,
    max_rounds: int = 50,
) -> tuple[Vector, Vector]:
    """Coefficients (intercept first) and their standard errors, by Newton-Raphson."""
    xs, ys = design(paths, outcome, predictors)
    beta: Vector = (0.0,) * (len(predictors) + 1)
    for _ in range(max_rounds):
        terms = logistic_terms(xs, ys, beta)
        step = newton_step(terms)
        beta = tuple(b + s for b, s in zip(beta, step, strict=True))
        if max(abs(s) for s in step) < tolerance:
            break
    return beta, standard_errors(logistic_terms(xs, ys, beta).information)
