"""ptm: the Personal Health Train on git."""

from __future__ import annotations

__version__ = "0.1.0"
