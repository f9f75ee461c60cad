"""Newton-Raphson arithmetic for logistic regression, in plain Python (a few coefficients).

``NewtonTerms`` are sums over rows at given coefficients (what a site sends, or what pooled data
gives); adding the sites' terms and solving ``information · step = gradient`` is one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .central import StudyError

Vector = tuple[float, ...]
Matrix = tuple[Vector, ...]


@dataclass(frozen=True)
class NewtonTerms:
    """Sums over rows at given coefficients: what one site (or a pooled data set) contributes."""

    count: int
    skipped: int
    loglik: float
    gradient: Vector
    information: Matrix

    def __add__(self, other: NewtonTerms) -> NewtonTerms:
        return NewtonTerms(
            self.count + other.count,
            self.skipped + other.skipped,
            self.loglik + other.loglik,
            tuple(a + b for a, b in zip(self.gradient, other.gradient, strict=True)),
            tuple(
                tuple(a + b for a, b in zip(row, other_row, strict=True))
                for row, other_row in zip(self.information, other.information, strict=True)
            ),
        )


def newton_step(terms: NewtonTerms) -> Vector:
    """Solve information · step = gradient."""
    return solve(terms.information, terms.gradient)


def standard_errors(information: Matrix) -> Vector:
    """Square roots of the diagonal of the inverse information matrix."""
    size = len(information)
    unit = [tuple(1.0 if i == j else 0.0 for i in range(size)) for j in range(size)]
    return tuple(math.sqrt(solve(information, e)[j]) for j, e in enumerate(unit))


def solve(matrix: Matrix, rhs: Vector) -> Vector:
    """Gaussian elimination with partial pivoting; StudyError for a singular matrix."""
    size = len(rhs)
    rows = [[*matrix[i], rhs[i]] for i in range(size)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        if rows[pivot][col] == 0.0:
            raise StudyError("the information matrix is singular (a predictor without variation?)")
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(col + 1, size):
            factor = rows[r][col] / rows[col][col]
            rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    solution = [0.0] * size
    for i in reversed(range(size)):
        known = sum(rows[i][j] * solution[j] for j in range(i + 1, size))
        solution[i] = (rows[i][size] - known) / rows[i][i]
    return tuple(solution)
