"""How sure is a number: per-unit samples, estimators, bootstrap intervals and paired differences.

Every sampled metric is a function of statistics per *sampling unit*: contexts (sequences) for
the core metrics, tasks (and the examples inside each task) for probing, latents for n2g,
ablation and autointerp. An evaluator returns those statistics as :class:`Samples` (one per
unit kind) and declares, per metric, an *estimator* that turns them into the metric's value:

- :class:`Ratio` — ``offset + scale · Σ_u num_u / Σ_u den_u`` where ``num`` and ``den`` are
  linear combinations of columns (a mean over units when ``den`` is None: the count of units
  whose columns are defined). Pooled means over tokens (MSE, CE, KL), ratios of pooled sums
  (FVU, CE-loss score) and means over latents all have this form.
- :class:`MeanOfMeans` — the mean over units of each unit's mean over its sub-units (a probing
  task's loss is the mean over its test examples; ``probe_loss`` the mean over tasks).

The interval is a percentile bootstrap over units (two-level for :class:`MeanOfMeans`: units,
then sub-units within each unit): ``n_boot`` (1000) resamples from a fixed seed, so results are
deterministic; the standard error is the resamples' standard deviation. Where two results share
units (same ids: the same token contexts, the same task samples, the same latents of the same
SAE) their difference is bootstrapped *paired* (one set of resample weights for both sides);
otherwise independently. Unit ids carry content (a hash of a context's tokens, a task's sample,
an SAE fingerprint), so pairing can only happen where the units really are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

N_BOOT = 1000
SEED = 20240917
LEVEL = 0.95


@dataclass
class Samples:
    """Statistics per sampling unit: ``ids`` (content-derived, for pairing) and columns of one
    value per unit (a number, None where undefined, or a list of per-sub-unit numbers)."""

    unit: str
    ids: list[str]
    columns: dict[str, list[Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "ids": list(self.ids), "columns": self.columns}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Samples:
        return cls(str(data["unit"]), [str(i) for i in data["ids"]], dict(data.get("columns", {})))


@dataclass(frozen=True)
class Ratio:
    """``offset + scale · Σ num / Σ den`` over units; ``num``/``den`` map column → coefficient."""

    unit: str
    num: dict[str, float]
    den: dict[str, float] | None = None
    scale: float = 1.0
    offset: float = 0.0
    kind: str = "ratio"


@dataclass(frozen=True)
class MeanOfMeans:
    """Mean over units of the mean of each unit's list in column ``col`` (two-level bootstrap)."""

    unit: str
    col: str
    kind: str = "mean_of_means"


Estimator = Ratio | MeanOfMeans


def mean_of(unit: str, col: str) -> Ratio:
    """The mean over units of one column (units where it is undefined left out)."""
    return Ratio(unit, {col: 1.0})


def estimator_to_dict(est: Estimator | None) -> dict[str, Any] | None:
    if est is None:
        return None
    if isinstance(est, Ratio):
        return {
            "kind": est.kind,
            "unit": est.unit,
            "num": est.num,
            "den": est.den,
            "scale": est.scale,
            "offset": est.offset,
        }
    return {"kind": est.kind, "unit": est.unit, "col": est.col}


def estimator_from_dict(data: dict[str, Any] | None) -> Estimator | None:
    if not data:
        return None
    if data.get("kind") == "ratio":
        return Ratio(
            data["unit"],
            dict(data["num"]),
            dict(data["den"]) if data.get("den") else None,
            float(data.get("scale", 1.0)),
            float(data.get("offset", 0.0)),
        )
    if data.get("kind") == "mean_of_means":
        return MeanOfMeans(data["unit"], data["col"])
    return None


@dataclass
class Interval:
    """A point estimate with its bootstrap standard error and ``level`` interval over ``n`` units."""

    value: float | None
    se: float | None
    low: float | None
    high: float | None
    n: int
    unit: str
    method: str = "bootstrap-percentile"
    n_boot: int = N_BOOT
    level: float = LEVEL

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "se": self.se,
            "ci_low": self.low,
            "ci_high": self.high,
            "n": self.n,
            "unit": self.unit,
            "method": self.method,
            "n_boot": self.n_boot,
            "level": self.level,
        }


# -- evaluating estimators on (weighted) units ---------------------------------------------------


def _ratio_arrays(est: Ratio, s: Samples) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-unit numerator and denominator (units with any undefined column dropped) and their ids."""
    cols = list(est.num) + list(est.den or {})
    n = len(s.ids)
    ok = np.ones(n, dtype=bool)
    arrays = {}
    for c in cols:
        vals = s.columns.get(c)
        if vals is None or len(vals) != n:
            return np.zeros(0), np.zeros(0), []
        a = np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
        ok &= np.isfinite(a)
        arrays[c] = a
    num = sum(coef * arrays[c] for c, coef in est.num.items())
    den = sum(coef * arrays[c] for c, coef in est.den.items()) if est.den else np.ones(n)
    return np.asarray(num)[ok], np.asarray(den)[ok], [i for i, k in zip(s.ids, ok, strict=True) if k]


def _lists(est: MeanOfMeans, s: Samples) -> tuple[list[np.ndarray], list[str]]:
    vals = s.columns.get(est.col) or []
    out, ids = [], []
    for uid, v in zip(s.ids, vals, strict=False):
        if v is None:
            continue
        a = np.array([np.nan if x is None else float(x) for x in v], dtype=np.float64)
        a = a[np.isfinite(a)]
        if a.size:
            out.append(a)
            ids.append(uid)
    return out, ids


def _ratio_value(est: Ratio, num: np.ndarray, den: np.ndarray) -> float | None:
    d = float(den.sum())
    if num.size == 0 or d == 0 or not math.isfinite(d):
        return None
    return est.offset + est.scale * float(num.sum()) / d


def columns_of(est: Estimator) -> set[str]:
    """The sample columns an estimator reads."""
    if isinstance(est, Ratio):
        return set(est.num) | set(est.den or {})
    return {est.col}


def has_columns(est: Estimator, samples: dict[str, Samples]) -> bool:
    """Whether the samples hold every column ``est`` reads: a metric whose columns an evaluator did
    not produce in this run (an optional variant it was not asked for) is absent, not undefined."""
    s = samples.get(est.unit)
    return s is not None and columns_of(est) <= set(s.columns)


def estimate(est: Estimator, samples: dict[str, Samples]) -> float | None:
    """The metric's value from the samples (None where undefined, never NaN)."""
    s = samples.get(est.unit)
    if s is None:
        return None
    if isinstance(est, Ratio):
        num, den, _ = _ratio_arrays(est, s)
        return _ratio_value(est, num, den)
    lists, _ = _lists(est, s)
    return float(np.mean([a.mean() for a in lists])) if lists else None


def resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]`` multinomial resample counts (each row sums to n)."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = idx + (np.arange(n_boot) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _ratio_draws(est: Ratio, num: np.ndarray, den: np.ndarray, w: np.ndarray) -> np.ndarray:
    d = w @ den
    with np.errstate(divide="ignore", invalid="ignore"):
        return est.offset + est.scale * (w @ num) / d


def _mom_draws(
    lists: list[np.ndarray], w: np.ndarray, rng: np.random.Generator, inner: list[np.ndarray] | None = None
) -> np.ndarray:
    """Two-level draws: each unit's mean under a within-unit resample (``inner`` index sets, or
    fresh ones), then the weighted mean over units with weights ``w``."""
    n_boot = w.shape[0]
    means = np.empty((n_boot, len(lists)))
    for j, a in enumerate(lists):
        idx = inner[j] if inner is not None else rng.integers(0, a.size, size=(n_boot, a.size))
        means[:, j] = a[idx].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (w * means).sum(1) / w.sum(1)


def _summary(value: float | None, draws: np.ndarray, n: int, unit: str, n_boot: int) -> Interval:
    draws = draws[np.isfinite(draws)]
    if value is None or draws.size < 2 or n < 2:
        return Interval(value, None, None, None, n, unit, n_boot=n_boot)
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Interval(value, float(draws.std(ddof=1)), float(lo), float(hi), n, unit, n_boot=n_boot)


def interval(est: Estimator, samples: dict[str, Samples], n_boot: int = N_BOOT, seed: int = SEED) -> Interval:
    """Bootstrap standard error and 95% percentile interval of one metric."""
    s = samples.get(est.unit)
    rng = np.random.default_rng(seed)
    if s is None:
        return Interval(None, None, None, None, 0, est.unit, n_boot=n_boot)
    if isinstance(est, Ratio):
        num, den, _ = _ratio_arrays(est, s)
        value = _ratio_value(est, num, den)
        if num.size < 2:
            return Interval(value, None, None, None, int(num.size), est.unit, n_boot=n_boot)
        return _summary(
            value, _ratio_draws(est, num, den, resample_weights(num.size, n_boot, rng)), num.size, est.unit, n_boot
        )
    lists, _ = _lists(est, s)
    value = float(np.mean([a.mean() for a in lists])) if lists else None
    if len(lists) < 2:
        return Interval(value, None, None, None, len(lists), est.unit, n_boot=n_boot)
    w = resample_weights(len(lists), n_boot, rng)
    return _summary(value, _mom_draws(lists, w, rng), len(lists), est.unit, n_boot)


@dataclass
class Difference:
    """``a - b`` of one metric with its bootstrap interval; ``paired`` when the units coincided."""

    value: float | None
    se: float | None
    low: float | None
    high: float | None
    paired: bool
    n_a: int
    n_b: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "diff": self.value,
            "se": self.se,
            "ci_low": self.low,
            "ci_high": self.high,
            "paired": self.paired,
            "n_a": self.n_a,
            "n_b": self.n_b,
        }


def difference(
    est_a: Estimator,
    samples_a: dict[str, Samples],
    est_b: Estimator,
    samples_b: dict[str, Samples],
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> Difference:
    """Bootstrap of ``metric(a) - metric(b)``: paired (shared resample weights) when both sides
    have the same estimator and exactly the same unit ids, otherwise independent resamples."""
    rng = np.random.default_rng(seed)
    va, vb = estimate(est_a, samples_a), estimate(est_b, samples_b)
    value = None if va is None or vb is None else va - vb
    sa, sb = samples_a.get(est_a.unit), samples_b.get(est_b.unit)
    if value is None or sa is None or sb is None:
        return Difference(value, None, None, None, False, 0, 0)
    if isinstance(est_a, Ratio) and isinstance(est_b, Ratio):
        na, da, ia = _ratio_arrays(est_a, sa)
        nb, db, ib = _ratio_arrays(est_b, sb)
        paired = est_a == est_b and ia == ib and len(ia) >= 2
        if paired:
            w = resample_weights(len(ia), n_boot, rng)
            draws = _ratio_draws(est_a, na, da, w) - _ratio_draws(est_b, nb, db, w)
        elif len(ia) >= 2 and len(ib) >= 2:
            draws = _ratio_draws(est_a, na, da, resample_weights(len(ia), n_boot, rng)) - _ratio_draws(
                est_b, nb, db, resample_weights(len(ib), n_boot, rng)
            )
        else:
            return Difference(value, None, None, None, False, len(ia), len(ib))
        n_a, n_b = len(ia), len(ib)
    elif isinstance(est_a, MeanOfMeans) and isinstance(est_b, MeanOfMeans):
        la, ia = _lists(est_a, sa)
        lb, ib = _lists(est_b, sb)
        paired = ia == ib and len(ia) >= 2 and all(x.size == y.size for x, y in zip(la, lb, strict=True))
        if paired:
            w = resample_weights(len(ia), n_boot, rng)
            inner = [rng.integers(0, a.size, size=(n_boot, a.size)) for a in la]
            draws = _mom_draws(la, w, rng, inner) - _mom_draws(lb, w, rng, inner)
        elif len(ia) >= 2 and len(ib) >= 2:
            draws = _mom_draws(la, resample_weights(len(ia), n_boot, rng), rng) - _mom_draws(
                lb, resample_weights(len(ib), n_boot, rng), rng
            )
        else:
            return Difference(value, None, None, None, False, len(ia), len(ib))
        n_a, n_b = len(ia), len(ib)
    else:
        return Difference(value, None, None, None, False, 0, 0)
    draws = draws[np.isfinite(draws)]
    if draws.size < 2:
        return Difference(value, None, None, None, paired, n_a, n_b)
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Difference(value, float(draws.std(ddof=1)), float(lo), float(hi), paired, n_a, n_b)


def samples_from_json(data: dict[str, Any]) -> dict[str, Samples]:
    return {k: Samples.from_dict(v) for k, v in (data or {}).items()}
