"""How numbers look in every table saebench prints or writes (board, compare, run summary)."""

from __future__ import annotations

from typing import Any

ARROW = {"up": " ↑", "down": " ↓", "": ""}


def fmt(v: Any) -> str:
    """4 significant digits; small magnitudes in scientific notation; ``n/a`` for undefined."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)
