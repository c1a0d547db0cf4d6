"""How sure is a number: per-unit samples, estimators, intervals that hold, paired differences.

Every sampled metric is a function of statistics per *sampling unit*: contexts (sequences) for
the core metrics, tasks for probing, latents for n2g, ablation and autointerp, letters, pairs,
classes or datasets elsewhere. An evaluator returns those statistics as :class:`Samples` (one per
unit kind) and declares, per metric, an *estimator* that turns them into the metric's value:

- :class:`Ratio` — ``offset + scale · Σ_u num_u / Σ_u den_u`` where ``num`` and ``den`` are
  linear combinations of columns (a mean over units when ``den`` is None: the count of units
  whose columns are defined). Pooled means over tokens (MSE, CE, KL), ratios of pooled sums
  (FVU, CE-loss score) and means over latents all have this form.
- :func:`proportion_of` — a Ratio over a 0/1 column declared as a proportion: its interval is
  the exact (Clopper–Pearson) binomial interval, which holds at every unit count.
- :class:`MeanOfMeans` — the mean over units of each unit's mean over its sub-units (a probing
  task's loss is the mean over its test examples; ``probe_loss`` the mean over tasks).

**Independent units.** Units are independent unless the samples say otherwise: contexts are cut
from concatenated documents, so core's samples carry each context's source document
(``Samples.clusters``, cluster unit ``document``) and every interval treats *documents* as the
independent units (contexts of one document go in and out together). Latents, tasks, pairs,
classes and letters are their own independent units. Every interval states its unit and its
independent unit (``Interval.to_dict``).

**The interval** (method ``studentized-bootstrap+t``; the coverage suite in
``benchmarks/coverage.py`` and ``docs/statistics.md`` measures why): with G independent units,
the union of (a) the t interval ``value ± t_ν · se`` with the linearised (delta-method,
cluster-robust) standard error ``se² = Σ_g u_g² / (1 - h_g)`` (``u_g`` the influence of unit ``g``
on the value, ``h_g`` its leverage: CR2; ``G/(G-1) · Σ u_g²`` for units of equal weight) and
ν = G - 1, or the effective number of clusters minus one for clusters of unequal size, and (b) the
studentised bootstrap interval (``N_BOOT`` resamples of the independent units from a fixed seed,
the same ``se`` formula on every resample; each side at most :data:`BOOT_T_CAP` times the t
interval's, since beyond that one dominant document drives it). (a) holds for near-symmetric
data from a few units; (b) corrects for skewed data, and so the interval may be asymmetric. No
interval is given (``low``/``high``/``se`` None, the reason in ``reason``) when there are fewer
than :data:`MIN_UNITS` independent units, when the sample shows no spread, or when the
studentised bootstrap cannot bound the value (too few distinct values: e.g. 18 zeros and 2
non-zeros). The MeanOfMeans interval is over the units' means (a unit's mean carries its own
sub-unit noise into their spread).

**Differences** between two results are *paired* (the same resample of the same independent
units for both sides, the influence of each unit taken on the difference) where both sides have
the same estimator and exactly the same unit ids; otherwise they are independent: Welch's t
interval from the two standard errors. Unit ids carry content (a hash of a context's tokens, a
task's sample, an SAE fingerprint), so pairing can only happen where the units really are the same.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

N_BOOT = 1000
SEED = 20240917
LEVEL = 0.95
#: fewer independent units than this: no interval (the board prints the unit count instead)
MIN_UNITS = 8
METHOD = "studentized-bootstrap+t"
#: each side of the studentised bootstrap interval is at most this many times the t interval's:
#: beyond that its quantiles reflect one dominant document (a resample without it has a tiny
#: standard error) rather than the estimate's sampling distribution
BOOT_T_CAP = 2.0
#: a standard error below this fraction of max(1, |value|) is no spread (float rounding)
_NO_SPREAD = 1e-12


@dataclass
class Samples:
    """Statistics per sampling unit: ``ids`` (content-derived, for pairing) and columns of one
    value per unit (a number, None where undefined, or a list of per-sub-unit numbers).

    ``clusters`` (optional, one label per unit): units with the same label are not independent
    (contexts of one document); intervals resample whole clusters, named by ``cluster_unit``."""

    unit: str
    ids: list[str]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    clusters: list[str] | None = None
    cluster_unit: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.unit, "ids": list(self.ids), "columns": self.columns}
        if self.clusters is not None:
            out["clusters"] = list(self.clusters)
            out["cluster_unit"] = self.cluster_unit
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Samples:
        clusters = data.get("clusters")
        return cls(
            str(data["unit"]),
            [str(i) for i in data["ids"]],
            dict(data.get("columns", {})),
            [str(c) for c in clusters] if clusters is not None else None,
            str(data.get("cluster_unit", "")),
        )


@dataclass(frozen=True)
class Ratio:
    """``offset + scale · Σ num / Σ den`` over units; ``num``/``den`` map column → coefficient.
    ``kind="proportion"`` (see :func:`proportion_of`) marks a mean of a 0/1 column."""

    unit: str
    num: dict[str, float]
    den: dict[str, float] | None = None
    scale: float = 1.0
    offset: float = 0.0
    kind: str = "ratio"


@dataclass(frozen=True)
class MeanOfMeans:
    """Mean over units of the mean of each unit's list in column ``col``."""

    unit: str
    col: str
    kind: str = "mean_of_means"


Estimator = Ratio | MeanOfMeans


def mean_of(unit: str, col: str) -> Ratio:
    """The mean over units of one column (units where it is undefined left out)."""
    return Ratio(unit, {col: 1.0})


def proportion_of(unit: str, col: str) -> Ratio:
    """The fraction of units whose 0/1 column is 1, with the exact (Clopper–Pearson) interval.

    For a yes/no outcome per independent unit (a latent is split or not, a letter is absorbed or
    not): the exact interval holds at every unit count, also near 0 or 1 where a bootstrap or t
    interval of a few units covers far less than 95%. Where a value is not 0 or 1, or the units
    are clustered, the general interval is used."""
    return Ratio(unit, {col: 1.0}, kind="proportion")


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
    if data.get("kind") in ("ratio", "proportion"):
        return Ratio(
            data["unit"],
            dict(data["num"]),
            dict(data["den"]) if data.get("den") else None,
            float(data.get("scale", 1.0)),
            float(data.get("offset", 0.0)),
            str(data["kind"]),
        )
    if data.get("kind") == "mean_of_means":
        return MeanOfMeans(data["unit"], data["col"])
    return None


@dataclass
class Interval:
    """A point estimate with its standard error and ``level`` interval over ``n`` units, of which
    ``n_clusters`` are independent (``cluster_unit``: documents for contexts, else the unit itself).
    ``low``/``high``/``se`` are None where no interval holds (``reason`` says why)."""

    value: float | None
    se: float | None
    low: float | None
    high: float | None
    n: int
    unit: str
    method: str = METHOD
    n_boot: int = N_BOOT
    level: float = LEVEL
    n_clusters: int | None = None
    cluster_unit: str = ""
    df: float | None = None
    reason: str = ""
    target: str = ""

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "se": self.se,
            "ci_low": self.low,
            "ci_high": self.high,
            "n": self.n,
            "unit": self.unit,
            "cluster_unit": self.cluster_unit or self.unit,
            "n_clusters": self.n if self.n_clusters is None else self.n_clusters,
            "method": self.method,
            "level": self.level,
        }
        if "bootstrap" in self.method:
            out["n_boot"] = self.n_boot
        if self.df is not None:
            out["df"] = self.df
        if self.reason:
            out["reason"] = self.reason
        if self.target:
            out["target"] = self.target
        return out


# -- per-unit arrays of an estimator ---------------------------------------------------------------


@dataclass
class _Lin:
    """One ratio ``offset + scale · Σ num / Σ den`` as per-cluster sums (``G`` independent units)."""

    num: np.ndarray  # [G]
    den: np.ndarray  # [G]
    scale: float
    offset: float

    @property
    def value(self) -> float | None:
        d = float(self.den.sum())
        if self.num.size == 0 or d == 0 or not math.isfinite(d):
            return None
        return self.offset + self.scale * float(self.num.sum()) / d


def _ratio_units(est: Ratio, s: Samples) -> tuple[np.ndarray, np.ndarray, list[str], list[str] | None]:
    cols = list(est.num) + list(est.den or {})
    n = len(s.ids)
    ok = np.ones(n, dtype=bool)
    arrays = {}
    for c in cols:
        vals = s.columns.get(c)
        if vals is None or len(vals) != n:
            return np.zeros(0), np.zeros(0), [], None
        a = np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
        ok &= np.isfinite(a)
        arrays[c] = a
    num = sum(coef * arrays[c] for c, coef in est.num.items())
    den = sum(coef * arrays[c] for c, coef in est.den.items()) if est.den else np.ones(n)
    ids = [i for i, k in zip(s.ids, ok, strict=True) if k]
    clusters = _kept_clusters(s, ok)
    return np.asarray(num)[ok], np.asarray(den)[ok], ids, clusters


def _kept_clusters(s: Samples, ok: np.ndarray | list[bool]) -> list[str] | None:
    if s.clusters is None or len(s.clusters) != len(s.ids):
        return None
    return [c for c, k in zip(s.clusters, ok, strict=True) if k]


def _mom_units(est: MeanOfMeans, s: Samples) -> tuple[list[np.ndarray], list[str], list[str] | None]:
    vals = s.columns.get(est.col) or []
    out, ids, ok = [], [], []
    for uid, v in zip(s.ids, vals, strict=False):
        a = np.array([np.nan if x is None else float(x) for x in v], dtype=np.float64) if v is not None else None
        a = a[np.isfinite(a)] if a is not None else None
        ok.append(a is not None and a.size > 0)
        if ok[-1]:
            out.append(a)
            ids.append(uid)
    ok += [False] * (len(s.ids) - len(ok))
    return out, ids, _kept_clusters(s, ok)


def _group(values: list[np.ndarray], clusters: list[str] | None) -> tuple[list[np.ndarray], int]:
    """Per-cluster sums of each per-unit array (units their own clusters when ``clusters`` is None)."""
    if clusters is None:
        return values, len(values[0]) if values else 0
    index: dict[str, int] = {}
    g = np.array([index.setdefault(c, len(index)) for c in clusters], dtype=np.int64)
    return [np.bincount(g, weights=v, minlength=len(index)) for v in values], len(index)


def _linear(est: Estimator, s: Samples) -> tuple[_Lin, list[str], list[str] | None, np.ndarray]:
    """The estimator as one ratio of per-unit sums (MeanOfMeans: the units' means over 1), the
    kept ids, their clusters, and the per-unit values of the numerator (for the proportion test)."""
    if isinstance(est, Ratio):
        num, den, ids, clusters = _ratio_units(est, s)
        return _Lin(num, den, est.scale, est.offset), ids, clusters, num
    lists, ids, clusters = _mom_units(est, s)
    means = np.array([a.mean() for a in lists], dtype=np.float64)
    return _Lin(means, np.ones(means.size), 1.0, 0.0), ids, clusters, means


def _clustered(lin: _Lin, clusters: list[str] | None) -> tuple[_Lin, int]:
    (num, den), g = _group([lin.num, lin.den], clusters)
    return _Lin(num, den, lin.scale, lin.offset), g


def _cluster_df(n: int, clusters: list[str] | None) -> float:
    """Degrees of freedom of the clustered standard error: G - 1 for G clusters of equal size,
    fewer when a few large clusters dominate: the effective number of clusters (Σ m_g)² / Σ m_g²
    (m_g units in cluster g) minus one, Satterthwaite's approximation under the independence
    working model that Bell and McCaffrey's degrees of freedom use with CR2 (Imbens and Kolesár
    2016). The board's quick token set, 64 contexts in 22 documents of up to 12 contexts: 10.4
    instead of 21 (t quantile 2.22 instead of 2.08)."""
    if clusters is None:
        return float(n - 1)
    m = np.unique(np.asarray(clusters), return_counts=True)[1].astype(np.float64)
    return float(min(m.size - 1, max(1.0, m.sum() ** 2 / float(np.sum(m**2)) - 1)))


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
    return _linear(est, s)[0].value


# -- the interval: t ∪ studentised bootstrap over independent units -------------------------------


def resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]`` multinomial resample counts (each row sums to n)."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = idx + (np.arange(n_boot) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


@functools.lru_cache(maxsize=2)
def _seeded_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """The resample counts of ``n`` units from ``seed`` (every metric over the same units draws the
    same resamples: computed once, read-only)."""
    w = resample_weights(n, n_boot, np.random.default_rng(seed))
    w.flags.writeable = False
    return w


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.special import stdtrit

    return float(stdtrit(df, 1 - (1 - level) / 2))


def holm(pvalues: list[float], alpha: float = 0.05) -> set[int]:
    """Indices of the hypotheses Holm's step-down rejects at family-wise level ``alpha``: in order of
    p-value, reject while p_(i) <= alpha / (m - i), stopping at the first that is not (Holm 1979).
    Controls the chance of any false rejection at ``alpha`` under any dependence."""
    m = len(pvalues)
    out: set[int] = set()
    for rank, (p, i) in enumerate(sorted((p, i) for i, p in enumerate(pvalues))):
        if p > alpha / (m - rank):
            break
        out.add(i)
    return out


def t_pvalue(t: float, df: float | None) -> float:
    """Two-sided p-value of a t statistic (normal when ``df`` is None)."""
    from scipy.special import ndtr, stdtr

    a = -abs(t)
    return float(2 * (ndtr(a) if df is None or not math.isfinite(df) else stdtr(df, a)))


def _leverage(terms: list[tuple[float, _Lin]]) -> np.ndarray | None:
    """Each independent unit's share of the denominator (its leverage on a ratio of sums), averaged
    over the terms; None when every unit weighs the same (then CR2 below is the G/(G-1) factor)."""
    dens = [lin.den for _, lin in terms]
    if all(np.all(d == d[0]) for d in dens) or any(np.any(d < 0) for d in dens):
        return None
    return np.clip(np.mean([d / d.sum() for d in dens], axis=0), 0.0, 0.99)


def _se(terms: list[tuple[float, _Lin]], g: int) -> float:
    """Linearised standard error of ``Σ sign · ratio`` over ``g`` independent units, each unit's
    squared influence scaled by 1/(1 - its leverage) (Bell & McCaffrey's CR2: unbiased for
    clusters of unequal size; G/(G-1) for equal ones)."""
    u = np.zeros(g)
    for sign, lin in terms:
        d = float(lin.den.sum())
        r = float(lin.num.sum()) / d
        u += sign * lin.scale * (lin.num - r * lin.den) / d
    h = _leverage(terms)
    return math.sqrt(g / (g - 1) * float(np.sum(u**2)) if h is None else float(np.sum(u**2 / (1 - h))))


def _boot_se(terms: list[tuple[float, _Lin]], g: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per resample (rows of ``w``): the statistic ``Σ sign · ratio`` and its standard error by
    :func:`_se`'s formula computed on the resample (a unit drawn k times counts as k units)."""
    xs, coefs, value = [], [], 0.0
    for sign, lin in terms:
        sd = w @ lin.den
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (w @ lin.num) / sd
        value = value + sign * (lin.offset + lin.scale * r)
        c = sign * lin.scale / sd
        xs += [lin.num, lin.den]
        coefs += [c, -c * r]
    if _leverage(terms) is None:  # equal weights: Σ_g w_g u_g² by the expansion over the columns
        ss = np.zeros(w.shape[0])
        for i in range(len(xs)):
            for j in range(i, len(xs)):
                ss += (1 if i == j else 2) * coefs[i] * coefs[j] * (w @ (xs[i] * xs[j]))
        return np.asarray(value), np.sqrt(np.maximum(ss, 0.0) * g / (g - 1))
    ss = np.empty(w.shape[0])
    for start in range(0, w.shape[0], 128):  # [128, G] at a time
        wb = w[start : start + 128]
        u = sum(np.outer(c[start : start + 128], x) for c, x in zip(coefs, xs, strict=True))
        h = np.mean([lin.den[None, :] / (wb @ lin.den)[:, None] for _, lin in terms], axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ss[start : start + 128] = (wb * u**2 / (1 - np.clip(h, 0.0, 0.99))).sum(1)
    return np.asarray(value), np.sqrt(np.maximum(ss, 0.0))


def _t_union(
    terms: list[tuple[float, _Lin]], g: int, n_boot: int, seed: int, df: float
) -> tuple[float | None, float | None, float | None, str]:
    """(se, low, high, reason) of ``Σ sign · ratio`` over ``g`` independent units: the union of the
    t interval (``df`` degrees of freedom) and the studentised bootstrap interval, or no interval
    with the reason."""
    value = sum(sign * lin.value for sign, lin in terms)  # type: ignore[operator]
    if g < MIN_UNITS:
        return None, None, None, f"{g} independent units (fewer than {MIN_UNITS})"
    se = _se(terms, g)
    if not math.isfinite(se) or se <= _NO_SPREAD * max(1.0, abs(value)):
        return None, None, None, "no spread between units"
    tq = t_quantile(df)
    stat, se_b = _boot_se(terms, g, _seeded_weights(g, n_boot, seed))
    d = stat - value
    tiny = _NO_SPREAD * max(1.0, abs(value))
    with np.errstate(divide="ignore", invalid="ignore"):
        tb = np.where(se_b > tiny, d / se_b, np.where(np.abs(d) <= tiny, 0.0, np.sign(d) * np.inf))
    tb = tb[~np.isnan(tb)]
    lo_q, hi_q = np.quantile(tb, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], method="inverted_cdf")
    if not (math.isfinite(lo_q) and math.isfinite(hi_q)):
        return None, None, None, "too few distinct values to bound it (studentised bootstrap unbounded)"
    lo_q, hi_q = max(lo_q, -BOOT_T_CAP * tq), min(hi_q, BOOT_T_CAP * tq)
    low = min(value - tq * se, value - hi_q * se)
    high = max(value + tq * se, value - lo_q * se)
    return se, float(low), float(high), ""


def _clopper_pearson(k: int, n: int) -> tuple[float, float]:
    from scipy.special import betaincinv

    a = (1 - LEVEL) / 2
    lo = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, a))
    hi = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - a))
    return lo, hi


def interval(est: Estimator, samples: dict[str, Samples], n_boot: int = N_BOOT, seed: int = SEED) -> Interval:
    """Standard error and 95% interval of one metric (see the module doc for the method)."""
    s = samples.get(est.unit)
    if s is None:
        return Interval(None, None, None, None, 0, est.unit, reason="no samples")
    lin, ids, clusters, per_unit = _linear(est, s)
    value = lin.value
    cunit = (s.cluster_unit or "cluster") if clusters is not None else est.unit
    if value is None:
        return Interval(None, None, None, None, len(ids), est.unit, cluster_unit=cunit, reason="undefined")
    grouped, g = _clustered(lin, clusters)
    base = {"n_clusters": g, "cluster_unit": cunit}
    binary = bool(np.all((per_unit == 0) | (per_unit == 1)))
    if isinstance(est, Ratio) and est.kind == "proportion" and clusters is None and est.den is None and binary:
        n, k = per_unit.size, int(per_unit.sum())
        lo, hi = _clopper_pearson(k, n)
        p = k / n
        return Interval(
            value,
            abs(est.scale) * math.sqrt(p * (1 - p) / n),
            est.offset + est.scale * (lo if est.scale >= 0 else hi),
            est.offset + est.scale * (hi if est.scale >= 0 else lo),
            n,
            est.unit,
            method="clopper-pearson",
            **base,  # type: ignore[arg-type]
        )
    df = _cluster_df(len(ids), clusters)
    se, low, high, reason = _t_union([(1.0, grouped)], g, n_boot, seed, df)
    return Interval(value, se, low, high, len(ids), est.unit, df=df if se is not None else None, reason=reason, **base)  # type: ignore[arg-type]


@dataclass
class Difference:
    """``a - b`` of one metric with its interval; ``paired`` when the units coincided."""

    value: float | None
    se: float | None
    low: float | None
    high: float | None
    paired: bool
    n_a: int
    n_b: int
    df: float | None = None
    n_clusters: int | None = None
    method: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "diff": self.value,
            "se": self.se,
            "ci_low": self.low,
            "ci_high": self.high,
            "paired": self.paired,
            "n_a": self.n_a,
            "n_b": self.n_b,
            "df": self.df,
            "n_clusters": self.n_clusters,
            "method": self.method,
            "reason": self.reason,
        }


def welch(se_a: float, df_a: float | None, se_b: float, df_b: float | None) -> tuple[float, float | None]:
    """Standard error and Welch–Satterthwaite degrees of freedom of a difference of two
    independent estimates (df None, i.e. normal, when either side has none)."""
    se = math.sqrt(se_a**2 + se_b**2)
    if df_a is None or df_b is None or se == 0:
        return se, None
    den = (se_a**4 / df_a if df_a > 0 else 0.0) + (se_b**4 / df_b if df_b > 0 else 0.0)
    return se, (se**4 / den if den > 0 else None)


def difference(
    est_a: Estimator,
    samples_a: dict[str, Samples],
    est_b: Estimator,
    samples_b: dict[str, Samples],
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> Difference:
    """Interval of ``metric(a) - metric(b)``: paired (one resample of the shared independent units
    for both sides) when both sides have the same estimator and exactly the same unit ids,
    otherwise Welch's t interval from the two sides' standard errors."""
    sa, sb = samples_a.get(est_a.unit), samples_b.get(est_b.unit)
    if sa is None or sb is None:
        va, vb = estimate(est_a, samples_a), estimate(est_b, samples_b)
        value = None if va is None or vb is None else va - vb
        return Difference(value, None, None, None, False, 0, 0, reason="no samples")
    la, ia, ca, _ = _linear(est_a, sa)
    lb, ib, cb, _ = _linear(est_b, sb)
    va, vb = la.value, lb.value
    if va is None or vb is None:
        return Difference(None, None, None, None, False, len(ia), len(ib), reason="undefined")
    value = va - vb
    same_units = type(est_a) is type(est_b) and est_a == est_b and ia == ib
    if same_units:
        clusters = ca if ca is not None else cb  # the same units: one side's document ids serve both
        (na, da, nb, db), g = _group([la.num, la.den, lb.num, lb.den], clusters)
        terms = [(1.0, _Lin(na, da, la.scale, la.offset)), (-1.0, _Lin(nb, db, lb.scale, lb.offset))]
        df_c = _cluster_df(len(ia), clusters)
        se, low, high, reason = _t_union(terms, g, n_boot, seed, df_c)
        df = df_c if se is not None else None
        return Difference(value, se, low, high, True, len(ia), len(ib), df, g, METHOD, reason)
    iv_a = interval(est_a, samples_a, n_boot, seed)
    iv_b = interval(est_b, samples_b, n_boot, seed)
    if iv_a.se is None or iv_b.se is None:
        why = iv_a.reason if iv_a.se is None else iv_b.reason
        return Difference(value, None, None, None, False, len(ia), len(ib), reason=why)
    se, df = welch(iv_a.se, iv_a.df, iv_b.se, iv_b.df)
    q = t_quantile(math.inf if df is None else df)
    return Difference(value, se, value - q * se, value + q * se, False, len(ia), len(ib), df, None, "welch-t", "")


def samples_from_json(data: dict[str, Any]) -> dict[str, Samples]:
    return {k: Samples.from_dict(v) for k, v in (data or {}).items()}


# -- density metrics: a document jackknife ----------------------------------------------------------


def jackknife_interval(
    value: float, leave_one_out: np.ndarray, n: int, unit: str, cluster_unit: str, target: str, bounds=(0.0, 1.0)
) -> Interval:
    """Delete-one-cluster jackknife interval ``value ± t_{G-1} · se_J`` (clipped to ``bounds``),
    ``se_J² = (G-1)/G · Σ_g (θ_(g) - θ̄)²`` from the G leave-one-cluster-out values.

    For a symmetric statistic of G independent clusters the jackknife variance is conservative
    in expectation (Efron & Stein 1981), also for statistics a bootstrap gets wrong, such as the
    fraction of latents never seen firing (a resample can only lose contexts, so every bootstrap
    dead fraction is >= the estimate). The interval is symmetric, so it holds its estimate. No
    leave-one-out value differing from the others (no latent seen in one cluster only, for the
    dead fraction) gives no interval, not a zero-width one."""
    g = int(leave_one_out.size)
    method = "jackknife-t"
    if g < MIN_UNITS:
        return Interval(value, None, None, None, n, unit, method, n_clusters=g, cluster_unit=cluster_unit,
                        reason=f"{g} independent units (fewer than {MIN_UNITS})", target=target)  # fmt: skip
    se = math.sqrt((g - 1) / g * float(np.sum((leave_one_out - leave_one_out.mean()) ** 2)))
    if se <= _NO_SPREAD * max(1.0, abs(value)):
        return Interval(value, None, None, None, n, unit, method, n_clusters=g, cluster_unit=cluster_unit,
                        reason=f"no spread between {cluster_unit}s", target=target)  # fmt: skip
    h = t_quantile(g - 1) * se
    return Interval(value, se, max(bounds[0], value - h), min(bounds[1], value + h), n, unit, method,
                    n_clusters=g, cluster_unit=cluster_unit, df=float(g - 1), target=target)  # fmt: skip
