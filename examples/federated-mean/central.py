r"""The central side of the federated mean; the code is in examples/federated_mean.py.

    python examples/federated-mean/central.py REGISTRY --site hospital-a --site hospital-b \
        --column age --task-id mean-age-1

Run it from anywhere with a Python that has ptm installed; --help lists the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The code lives in the package ``examples`` at the repository's root (this folder's name has a
# dash, so it cannot be a package itself).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.federated_mean import main

if __name__ == "__main__":
    sys.exit(main())
