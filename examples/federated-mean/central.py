r"""The central side of the federated mean; the code is in examples/federated_mean.py.

    python examples/federated-mean/central.py REGISTRY --site hospital-a --site hospital-b \
        --column age --task-id mean-age-1

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
    sys.exit(importlib.import_module(f"{PACKAGE}.federated_mean").main())
