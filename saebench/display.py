"""How numbers look in every table saebench prints or writes (board, compare, run summary)."""

from __future__ import annotations

import math
from typing import Any

ARROW = {"up": " ↑", "down": " ↓", "": ""}
#: an interval whose two sides (value - low, high - value) differ by more than this fraction of its
#: half-width is printed with its ends, ``value [low, high]``; a more symmetric one as ``value ± half``
ASYMMETRY = 0.25


def fmt(v: Any) -> str:
    """4 significant digits; small magnitudes in scientific notation; ``n/a`` for undefined."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def interval_ends(value: Any, unc: dict[str, Any] | None) -> tuple[float, float] | None:
    """(low, high) of a stored 95% interval, None where there is none (or no numeric value)."""
    u = unc or {}
    lo, hi = u.get("ci_low"), u.get("ci_high")
    if _num(value) and _num(lo) and _num(hi):
        return float(lo), float(hi)
    return None


def with_interval(value: Any, unc: dict[str, Any] | None) -> str:
    """A number with its 95% interval as every table shows it:

    - ``value ± h`` (h the half-width) when the interval is about symmetric around the value;
    - ``value [low, high]`` when its sides differ by more than :data:`ASYMMETRY` of the
      half-width (a skewed metric, a bounded one near its bound; or an old result whose interval
      excludes its own estimate);
    - ``value (n=k)`` when the metric has no interval because its k independent units (documents
      for core, else latents, tasks, pairs, ...) are too few (docs/statistics.md);
    - ``value ± 0`` when the units show no spread at all (TopK's L0: every token has exactly k);
    - the value alone when the metric is not sampled."""
    ends = interval_ends(value, unc)
    if ends is not None:
        lo, hi = ends
        v = float(value)
        down, up, half = v - lo, hi - v, (hi - lo) / 2
        if down < 0 or up < 0 or abs(up - down) > ASYMMETRY * half:
            return f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"
        return f"{fmt(value)} ± {half:.2g}"
    u = unc or {}
    k = u.get("n_clusters", u.get("n"))
    if _num(value) and str(u.get("reason", "")).startswith("no spread"):
        return f"{fmt(value)} ± 0"
    if _num(value) and u.get("reason") and _num(k):
        return f"{fmt(value)} (n={int(k)})"
    return fmt(value)
