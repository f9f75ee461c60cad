r"""The central side of the iterative example (federated logistic regression by Newton-Raphson);
the code is in examples/federated_logistic.py.

    python examples/iterative/central.py REGISTRY --site hospital-a --site hospital-b \
        --prefix logit-1 --outcome event --predictor age --predictor bmi --predictor smoker

Run it from anywhere with a Python that has ptm installed; --help lists the options.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# This folder's name has a dash, so the code lives in the package above it: ``examples`` at the
# root of a source checkout, or ``ptm.examples`` when installed with ptm.
EXAMPLES = Path(__file__).resolve().parents[1]
if (EXAMPLES.parent / "__init__.py").is_file():
    PACKAGE = "ptm.examples"
else:
    PACKAGE = "examples"
    sys.path.insert(0, str(EXAMPLES.parent))

if __name__ == "__main__":
    sys.exit(importlib.import_module(f"{PACKAGE}.federated_logistic").main())
