r"""Synthetic patients.csv files for N sites, reproducible from a seed (examples/synthetic.py).

    python examples/iterative/make_data.py DATA_DIR --site hospital-a \
        --site hospital-b --seed 1

Each site's agent then mounts DATA_DIR/<site> at /data (site config: mounts).
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
    sys.exit(importlib.import_module(f"{PACKAGE}.synthetic").main())
