"""Synthetic patients for the examples: one ``patients.csv`` per site, reproducible from a seed.

Columns ``age,bmi,smoker,event``. Sites differ (older patients and more smokers at later sites,
different sizes) so that per-site results differ; about 3% of ``bmi`` values are missing
(empty). ``event`` follows a logistic model with ``TRUE_COEFFICIENTS`` (intercept, age, bmi,
smoker), so the iterative example has something to find.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path

DATA_FILE = "patients.csv"
COLUMNS = ("age", "bmi", "smoker", "event")
PREDICTORS = ("age", "bmi", "smoker")
OUTCOME = "event"
TRUE_COEFFICIENTS = (-6.0, 0.06, 0.08, 0.7)
MISSING_BMI_RATE = 0.03


def write_site_data(
    folder: Path, sites: Sequence[str], *, rows_per_site: int = 200, seed: int = 1
) -> dict[str, Path]:
    """Write ``folder/<site>/patients.csv`` for each site; return site → CSV path.

    Folders are world-readable: a site mounts ``folder/<site>`` at ``/data`` and its containers
    run as an unprivileged user.
    """
    rng = random.Random(seed)
    paths: dict[str, Path] = {}
    for index, site in enumerate(sites):
        site_dir = folder / site
        site_dir.mkdir(parents=True, exist_ok=True)
        site_dir.chmod(0o755)
        path = site_dir / DATA_FILE
        rows = [_patient(rng, index) for _ in range(rows_per_site + 37 * index)]
        lines = [",".join(COLUMNS), *(",".join(row) for row in rows)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        path.chmod(0o644)
        paths[site] = path
    return paths


def _patient(rng: random.Random, site_index: int) -> tuple[str, str, str, str]:
    age = min(95, max(18, round(rng.gauss(50 + 4 * site_index, 12))))
    bmi = min(50.0, max(15.0, round(rng.gauss(26 + 0.5 * site_index, 4), 1)))
    smoker = 1 if rng.random() < 0.25 + 0.05 * site_index else 0
    b0, b_age, b_bmi, b_smoker = TRUE_COEFFICIENTS
    eta = b0 + b_age * age + b_bmi * bmi + b_smoker * smoker
    event = 1 if rng.random() < 1 / (1 + math.exp(-eta)) else 0
    bmi_text = "" if rng.random() < MISSING_BMI_RATE else f"{bmi:.1f}"
    return str(age), bmi_text, str(smoker), str(event)


def site_files(folder: Path) -> dict[str, Path]:
    """Site → CSV for every ``folder/<site>/patients.csv`` (what ``write_site_data`` wrote)."""
    return {path.parent.name: path for path in sorted(folder.glob(f"*/{DATA_FILE}"))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make_data", description="Write synthetic patients.csv files, one folder per site."
    )
    parser.add_argument("folder", type=Path, help="writes FOLDER/<site>/patients.csv")
    parser.add_argument(
        "--site",
        action="append",
        dest="sites",
        metavar="SITE",
        help="a site (repeatable; default hospital-a, hospital-b, hospital-c)",
    )
    parser.add_argument("--rows", type=int, default=200, help="rows at the first site")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sites = args.sites or ["hospital-a", "hospital-b", "hospital-c"]
    for site, path in write_site_data(
        args.folder, sites, rows_per_site=args.rows, seed=args.seed
    ).items():
        rows = len(path.read_text(encoding="utf-8").splitlines()) - 1
        print(f"{site}: {path} ({rows} rows); mount {path.parent} at /data")
    return 0


if __name__ == "__main__":
    sys.exit(main())
