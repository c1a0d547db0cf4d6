"""Significance on the board: which SAEs cannot be told apart from the best, per metric (issue 20).

For one headline metric of one board section, :func:`marks` finds the best SAE (by the metric's
better direction; baselines never count) and compares every other SAE with it, each comparison
on the same units where they coincide (paired: the same token contexts, tasks or letters;
:func:`saebench.compare.difference_interval`), otherwise Welch's t from the two stored standard
errors (different latents of two SAEs). The p-values are two-sided t; Holm's step-down over the
section's rows keeps the chance of calling *any* SAE worse than the best by noise alone at 5%.
An SAE whose difference Holm does not reject is "not distinguishable from the best": the board
shows it in bold with the best (★). A comparison with no interval (too few units, no spread with
different values aside) cannot reject, so such an SAE stays bold: the board claims no more than
the numbers carry.

:func:`resolved_pairs` counts how many of the section's pairwise differences are resolved the same
way (every pair, Holm over the pairs): how much of a column's ordering the board can stand behind
at its profile (docs/seed_reliability.md).

Baselines (names starting ``baseline-``, written by :mod:`saebench.baselines`) are floors: the
board draws them apart, and they are never the best nor tested against it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from saebench import stats
from saebench.compare import difference_interval
from saebench.evaluators import Metric
from saebench.results import Result, is_baseline

ALPHA = 0.05


@dataclass(frozen=True)
class Marks:
    """One column's marks: ``best`` (None when the metric has no direction or no SAE reports it),
    ``tied`` the SAEs not distinguishable from it, ``compared`` how many were compared with it."""

    best: str | None = None
    tied: frozenset[str] = field(default_factory=frozenset)
    compared: int = 0

    def bold(self, name: str) -> bool:
        return name == self.best or name in self.tied


def _value(r: Result | None, metric: str) -> float | None:
    v = r.metrics.get(metric) if r is not None else None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
        return float(v)
    return None


def _candidates(rows: dict[str, dict[str, Any]], ev: str, metric: str) -> dict[str, Result]:
    """The non-baseline SAEs of a section that report ``metric`` as a finite number."""
    out = {}
    for name, row in sorted(rows.items()):
        r = row["results"].get(ev)
        if not is_baseline(name) and _value(r, metric) is not None:
            out[name] = r
    return out


def pvalue(m: Metric, a: Result, b: Result) -> float:
    """Two-sided p-value of the difference a − b of ``m``: paired where the units coincide, else
    Welch's t from the stored standard errors; 1 when no interval exists (nothing can be claimed),
    0 for a difference between values that have no spread at all (e.g. two TopK SAEs' exact L0)."""
    diff = float(a.metrics[m.name]) - float(b.metrics[m.name])
    if diff == 0:
        return 1.0
    *_, se, df, _ = difference_interval(m, m.name, a, b, stored_when_unpaired=True)
    if se is None or not math.isfinite(se):
        return 1.0
    if se == 0:
        no_spread = all("no spread" in str(r.uncertainty.get(m.name, {}).get("reason", "")) for r in (a, b))
        return 0.0 if no_spread else 1.0
    return stats.t_pvalue(diff / se, df)


def marks(rows: dict[str, dict[str, Any]], ev: str, m: Metric, alpha: float = ALPHA) -> Marks:
    """The best SAE of a column and those not distinguishable from it (module doc)."""
    if m.direction not in ("up", "down"):
        return Marks()
    cands = _candidates(rows, ev, m.name)
    if not cands:
        return Marks()
    sign = 1.0 if m.direction == "up" else -1.0
    best = max(cands, key=lambda n: (sign * float(cands[n].metrics[m.name]), [-ord(c) for c in n]))
    others = [n for n in cands if n != best]
    p = [pvalue(m, cands[n], cands[best]) for n in others]
    rejected = stats.holm(p, alpha)
    tied = frozenset(n for i, n in enumerate(others) if i not in rejected)
    return Marks(best, tied, len(others))


def resolved_pairs(rows: dict[str, dict[str, Any]], ev: str, m: Metric, alpha: float = ALPHA) -> tuple[int, int]:
    """(pairs whose difference is resolved, pairs) among the section's non-baseline SAEs for one
    metric, Holm over all pairs at family-wise ``alpha``."""
    cands = _candidates(rows, ev, m.name)
    pairs = list(itertools.combinations(sorted(cands), 2))
    p = [pvalue(m, cands[a], cands[b]) for a, b in pairs]
    return len(stats.holm(p, alpha)), len(pairs)
