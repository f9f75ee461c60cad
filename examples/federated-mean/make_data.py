r"""Synthetic patients.csv files for N sites, reproducible from a seed (examples/synthetic.py).

    python examples/federated-mean/make_data.py DATA_DIR --site hospital-a \
        --site hospital-b --seed 1

Each site's agent then mounts DATA_DIR/<site> at /data (site config: mounts).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The code lives in the package ``examples`` at the repository's root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
