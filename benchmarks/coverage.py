"""Do the intervals hold their 95%? Coverage and false-positive rates of every estimator the
evaluators use, at the unit counts each profile uses, on simulated data with a known truth.

    python benchmarks/coverage.py [--reps 2000] [--board leaderboard/results] [--out FILE.md]

Each *scenario* is one estimator (a mean over latents, a ratio of pooled sums over contexts
clustered in documents, a mean of task means, a proportion, the latent-density fractions) with a
data-generating process calibrated on the committed board's per-unit values (its docstring says
which metrics it stands for and how). For every default size (the unit counts of the profiles:
:func:`default_sizes` reads the evaluators' ``Config.PROFILE_DEFAULTS`` and
``saebench.profiles``) it prints

- **coverage** of the 95% interval: the share of simulated samples whose interval holds the
  true value, among the samples that got an interval, and the share that got one (``claimed``);
  ``before`` is the percentile bootstrap over units that saebench used until issue 26 (contexts
  resampled one by one, a two-level bootstrap for means of means), ``after`` the current
  :func:`saebench.stats.interval` (``studentized-bootstrap+t`` over independent units, exact
  for declared proportions, a document jackknife for densities);
- **false positives** of the paired comparison of two SAEs whose true values are equal (the
  same units, correlated per-unit values): how often the 95% interval of the difference
  excludes 0, and how often one metric alone fails the gate's family-wise test for m = 90
  metrics (before: |diff| > z_m·se, after: Holm's first step p < α/m on Welch/t p-values; at most
  m times that is the chance that a gate of m unchanged metrics fails). Where no interval is
  claimed the gate judges by the metric's minimum effect alone: ``effect-only`` is how often
  the difference exceeds it in the bad direction (metrics that declare none are not judged).

``--board DIR`` adds *plasmode* scenarios: the committed results' per-unit values (pooled over the
board's SAEs) as the population. Numpy and the package's own ``saebench.stats`` only, no model;
``tests/test_coverage.py`` runs the same scenarios at the quick sizes with fewer simulations.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import betaincinv, ndtr, ndtri

from saebench import stats
from saebench.stats import MeanOfMeans, Ratio, Samples

LEVEL = 0.95
FAMILY_M = 90  # directional metrics in a gate over the board's evaluators (issue 26's audit)
RHO = 0.7  # correlation of the two compared SAEs' per-unit values (same units, e.g. same latents' contexts)
T_TOK = 127  # kept tokens per context at ctx_len 128


# -- marginal distributions by their quantile functions (a Gaussian copula pairs two SAEs) -------------


def beta_q(a: float, b: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda u: betaincinv(a, b, u)


def zero_inflated(p0: float, q: Callable[[np.ndarray], np.ndarray], at: float = 0.0) -> Callable:
    """Value ``at`` with probability p0, else the quantile function q."""
    return lambda u: np.where(u < p0, at, q(np.clip((u - p0) / (1 - p0), 1e-12, 1 - 1e-12)))


def mixture(w: float, q1: Callable, q2: Callable) -> Callable:
    """w·F1 + (1-w)·F2 drawn as: the lower w of u from q1, the rest from q2 (a monotone coupling)."""
    return lambda u: np.where(u < w, q1(np.clip(u / w, 1e-12, 1 - 1e-12)), q2(np.clip((u - w) / (1 - w), 1e-12, 1)))


def normal_q(mu: float, sd: float, lo: float = -np.inf, hi: float = np.inf) -> Callable:
    return lambda u: np.clip(mu + sd * ndtri(np.clip(u, 1e-12, 1 - 1e-12)), lo, hi)


def discrete_q(values: list[float], probs: list[float]) -> Callable:
    cum = np.cumsum(probs) / np.sum(probs)
    vals = np.asarray(values, dtype=np.float64)
    return lambda u: vals[np.minimum(np.searchsorted(cum, u, side="right"), len(vals) - 1)]


def empirical_q(pool: np.ndarray) -> Callable:
    srt = np.sort(np.asarray(pool, dtype=np.float64))
    return lambda u: srt[np.minimum((u * srt.size).astype(int), srt.size - 1)]


def mean_of_q(q: Callable) -> float:
    u = (np.arange(200_000) + 0.5) / 200_000
    return float(np.mean(q(u)))


def paired_normals(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Two standard normal arrays with correlation RHO (the same units seen by two SAEs)."""
    z, ea, eb = rng.standard_normal((3, *shape))
    c = math.sqrt(1 - RHO**2)
    return RHO * z + c * ea, RHO * z + c * eb


# -- scenarios ------------------------------------------------------------------------------------


@dataclass
class Draw:
    """One simulated sample (``a``) and its paired twin with the same truth (``b``), with the raw
    per-unit arrays the 'before' method reads."""

    a: dict[str, Samples]
    b: dict[str, Samples]
    raw_a: Any
    raw_b: Any


@dataclass
class Scenario:
    name: str
    stands_for: str
    estimator: Any  # a saebench.stats estimator, or "density:<metric>"
    draw: Callable[[np.random.Generator, int], Draw]
    truth: float | None  # None: the mean of the estimates over the simulation (density metrics)
    sizes: list[tuple[str, int]]
    min_effect: float = 0.0
    direction: str = "up"
    kind: str = "unit"  # unit | cluster | mom | proportion | density
    extra: dict[str, Any] = field(default_factory=dict)


def _unit_samples(name: str, num: np.ndarray, den: np.ndarray | None) -> dict[str, Samples]:
    cols = {"x": num.tolist()} if den is None else {"num": num.tolist(), "den": den.tolist()}
    return {"u": Samples("u", [str(i) for i in range(num.size)], cols)}


def unit_scenario(
    name: str, stands_for: str, q: Callable, sizes: list[tuple[str, int]], min_effect: float = 0.0,
    den: Callable[[np.random.Generator, int], np.ndarray] | None = None, proportion: bool = False,
) -> Scenario:  # fmt: skip
    """Independent units with marginal quantile function q (a mean; with ``den``: a ratio of sums
    Σ den·x / Σ den with per-unit weights independent of x)."""

    def draw(rng: np.random.Generator, n: int) -> Draw:
        za, zb = paired_normals(rng, (n,))
        xa, xb = q(ndtr(za)), q(ndtr(zb))
        if den is None:
            return Draw(_unit_samples(name, xa, None), _unit_samples(name, xb, None), (xa, None), (xb, None))
        d = den(rng, n)
        return Draw(_unit_samples(name, xa * d, d), _unit_samples(name, xb * d, d), (xa * d, d), (xb * d, d))

    if proportion:
        est: Any = stats.proportion_of("u", "x")
    else:
        est = stats.mean_of("u", "x") if den is None else Ratio("u", {"num": 1.0}, {"den": 1.0})
    return Scenario(name, stands_for, est, draw, mean_of_q(q), sizes, min_effect,
                    kind="proportion" if proportion else "unit")  # fmt: skip


def mom_scenario(
    name: str, stands_for: str, q_task: Callable, per_example: Callable, sizes: list[tuple[str, int]],
    n_sub: int, min_effect: float = 0.0,
) -> Scenario:  # fmt: skip
    """Units (tasks, letters) with true means from q_task; each holds ``n_sub`` sub-unit values
    drawn by ``per_example(rng, means[n], n_sub)``; the estimator is the mean of unit means."""

    def draw(rng: np.random.Generator, n: int) -> Draw:
        za, zb = paired_normals(rng, (n,))
        ma, mb = q_task(ndtr(za)), q_task(ndtr(zb))
        la, lb = per_example(rng, ma, n_sub), per_example(rng, mb, n_sub)
        ids = [str(i) for i in range(n)]

        def s(lists: np.ndarray) -> dict[str, Samples]:
            return {"u": Samples("u", ids, {"x": [row.tolist() for row in lists]})}

        return Draw(s(la), s(lb), la, lb)

    return Scenario(name, stands_for, MeanOfMeans("u", "x"), draw, mean_of_q(q_task), sizes, min_effect, kind="mom")


def doc_sizes(rng: np.random.Generator, n_ctx: int) -> np.ndarray:
    """Document id of each of ``n_ctx`` consecutive contexts: documents span ceil(LogNormal(0.5, 1))
    contexts (the quick board token set: 64 contexts from 22 documents, the largest 12)."""
    out, g = [], 0
    while len(out) < n_ctx:
        out += [g] * int(math.ceil(rng.lognormal(0.5, 1.0)))
        g += 1
    return np.asarray(out[:n_ctx])


def cluster_scenario(
    name: str, stands_for: str, make: Callable[[np.random.Generator, np.ndarray, np.ndarray, np.ndarray], tuple],
    sizes: list[tuple[str, int]], est: Ratio, min_effect: float = 0.0, direction: str = "down",
) -> Scenario:  # fmt: skip
    """Contexts grouped in documents; ``make(rng, docs, z_doc, z_ctx)`` returns the context columns
    (a dict) from standard normal document and context effects."""

    def draw(rng: np.random.Generator, n: int) -> Draw:
        docs = doc_sizes(rng, n)
        g = int(docs.max()) + 1
        da, db = paired_normals(rng, (g,))
        ca, cb = paired_normals(rng, (n,))
        shared = rng.integers(0, 2**31)
        cols_a = make(np.random.default_rng(shared), docs, da[docs], ca)
        cols_b = make(np.random.default_rng(shared), docs, db[docs], cb)
        ids, labels = [f"c{i}" for i in range(n)], [f"d{d}" for d in docs]

        def s(cols: dict[str, np.ndarray]) -> dict[str, Samples]:
            return {"u": Samples("u", ids, {k: v.tolist() for k, v in cols.items()}, labels, "document")}

        return Draw(s(cols_a), s(cols_b), (cols_a, docs), (cols_b, docs))

    return Scenario(name, stands_for, est, draw, None, sizes, min_effect, direction, kind="cluster")


def _ctx_mean(mu: float, sd_doc: float, sd_ctx: float, skew: float = 0.0) -> Callable:
    """A per-token mean (ΔCE, KL) per context: μ + document effect + context effect (ICC =
    sd_doc²/(sd_doc²+sd_ctx²)); ``skew`` > 0 makes the context effect log-normal."""

    def make(rng: np.random.Generator, docs: np.ndarray, zd: np.ndarray, zc: np.ndarray) -> dict[str, np.ndarray]:
        e = (
            zc
            if skew == 0
            else (np.exp(skew * zc) - math.exp(skew**2 / 2)) / math.sqrt((math.exp(skew**2) - 1) * math.exp(skew**2))
        )
        v = mu + sd_doc * zd + sd_ctx * e
        n = np.full(docs.size, float(T_TOK))
        return {"num": v * n, "den": n}

    return make


def _ctx_pairs(mu: float, sd_doc: float, sd_ctx: float, sd_pair: float) -> Callable:
    """Ablation-like: 1 + Poisson(0.6) (position, latent) pairs per context (n_pairs uniform draws
    over contexts), each a score in [0, 1] around μ + document effect + context effect."""

    def make(rng: np.random.Generator, docs: np.ndarray, zd: np.ndarray, zc: np.ndarray) -> dict[str, np.ndarray]:
        k = 1 + rng.poisson(0.6, docs.size)
        centre = mu + sd_doc * zd + sd_ctx * zc
        num = np.array(
            [np.clip(c + sd_pair * rng.standard_normal(m), 0, 1).sum() for c, m in zip(centre, k, strict=True)]
        )
        return {"num": num, "den": k.astype(float)}

    return make


def _ctx_fvu(r0: float, sd_doc: float, sd_ctx: float) -> Callable:
    """FVU-like: per-context ratio r0·LogNormal (document and context effects, skewed like the
    board's per-context FVU, skewness ~0.8) times a per-context variance with cv 0.25."""

    def make(rng: np.random.Generator, docs: np.ndarray, zd: np.ndarray, zc: np.ndarray) -> dict[str, np.ndarray]:
        s2 = sd_doc**2 + sd_ctx**2
        ratio = r0 * np.exp(sd_doc * zd + sd_ctx * zc - s2 / 2)
        var = rng.gamma(16.0, 1 / 16.0, docs.size) * 100.0
        return {"num": ratio * var, "den": var}

    return make


def _ctx_score() -> Callable:
    """CE-score-like: 1 - Σ(ce_sae - ce_clean) / Σ(ce_abl - ce_clean), clean CE with a document
    effect (ICC 0.75) that moves the denominator, the SAE's damage with its own."""

    def make(rng: np.random.Generator, docs: np.ndarray, zd: np.ndarray, zc: np.ndarray) -> dict[str, np.ndarray]:
        g = int(docs.max()) + 1
        clean_doc = rng.standard_normal(g)[docs]  # shared by both SAEs (same text)
        clean = 3.0 + 0.75 * clean_doc + 0.4 * rng.standard_normal(docs.size)
        dce = 0.45 * np.exp(0.4 * zd + 0.25 * zc - (0.16 + 0.0625) / 2)
        n = float(T_TOK)
        return {"dmg": dce * n, "gap": (10.8 - clean) * n}

    return make


def density_scenario(name: str, stands_for: str, metric: str, sizes: list[tuple[str, int]], rates: dict) -> Scenario:
    """Latent firing: d latents with log-normal rates (a share exactly dead), bursty by document
    (each latent's rate in a document scaled by Gamma(shape, 1/shape)); counts per context Poisson."""
    d = int(rates["d"])

    def draw(rng: np.random.Generator, n: int) -> Draw:
        prng = np.random.default_rng(rates["seed"])  # one fixed SAE: the same latents every draw
        p = np.minimum(10 ** prng.normal(rates["mu"], rates["sd"], d), 0.5)
        p[prng.random(d) < rates["dead"]] = 0.0
        docs = doc_sizes(rng, n)
        g = int(docs.max()) + 1
        gam = rng.gamma(rates["shape"], 1 / rates["shape"], (g, d))
        counts = rng.poisson(T_TOK * p[None, :] * gam[docs])
        return Draw({}, {}, (counts, docs), None)

    return Scenario(name, stands_for, f"density:{metric}", draw, None, sizes, kind="density", extra={"metric": metric})


# -- the default unit counts of every profile --------------------------------------------------------


def default_sizes() -> dict[str, list[tuple[str, int]]]:
    """Unit counts per evaluator and profile, read from the code where the code fixes them."""
    from saebench.evaluators.ablation import AblationConfig
    from saebench.evaluators.autointerp import AutointerpConfig
    from saebench.evaluators.n2g import N2GConfig
    from saebench.evaluators.sae_probes import SaeProbesConfig
    from saebench.evaluators.scr import ScrConfig
    from saebench.evaluators.tpp import TppConfig
    from saebench.profiles import PROFILES
    from saebench.tasks.scr_tpp import OFFLINE_SCR, OFFLINE_TPP

    out: dict[str, list[tuple[str, int]]] = {}
    profiles = list(PROFILES)

    def per(cfg_cls: Any, key: str, label: str, fn: Callable[[Any], int]) -> None:
        out[label] = [(p, fn(cfg_cls.for_profile(p))) for p in profiles]

    per(N2GConfig, "n_latents", "n2g", lambda c: c.n_latents)
    contexts = {p: PROFILES[p]["tokens"] // PROFILES[p]["ctx_len"] for p in profiles}
    # ablation: the contexts its pairs fall in (n_pairs uniform draws over the profile's contexts)
    out["ablation"] = [
        (p, round(contexts[p] * (1 - math.exp(-AblationConfig.for_profile(p).n_pairs / contexts[p])))) for p in profiles
    ]
    per(AutointerpConfig, "n_latents", "autointerp", lambda c: c.n_latents)
    per(ScrConfig, "pairs", "scr", lambda c: len(c.pairs) if c.pairs else len(OFFLINE_SCR))
    per(TppConfig, "datasets", "tpp", lambda c: 4 * (len(c.datasets) if c.datasets else len(OFFLINE_TPP)))
    per(SaeProbesConfig, "datasets", "sae_probes", lambda c: len(c.datasets) if c.datasets else 113)
    out["core"] = [(p, PROFILES[p]["tokens"] // PROFILES[p]["ctx_len"]) for p in profiles]
    out["probing"] = [(p, 57) for p in profiles]  # the offline tasks with data (of 61)
    out["absorption"] = [(p, 20) for p in profiles]  # well-probed letters on the board (of 26)
    out["splitting"] = [(p, 2304) for p in profiles]  # latents: the board's typical width
    return out


def scenarios(sizes: dict[str, list[tuple[str, int]]], board: str | None = None) -> list[Scenario]:
    """Every estimator the evaluators use, each at its evaluators' default sizes (see module doc)."""

    def at(*evals: str) -> list[tuple[str, int]]:
        return [(f"{e} {p}", n) for e in evals for p, n in sizes[e]]

    out = [
        unit_scenario("latent score, 48% zeros", "n2g f1/precision/recall (zero for latents N2G cannot explain)",
                      zero_inflated(0.48, beta_q(1.5, 1.2)), at("n2g"), 0.02),
        unit_scenario("AUROC per latent", "autointerp detection/fuzzing AUROC (a quarter exactly 1)",
                      zero_inflated(0.25, beta_q(5, 2.5), at=1.0), at("autointerp"), 0.0),
        unit_scenario("correlation per latent", "autointerp simulation r", normal_q(0.35, 0.26, -1, 1),
                      at("autointerp"), 0.0),
        cluster_scenario("mean over pairs, in contexts in documents", "ablation sparsity (pairs grouped by context)",
                         _ctx_pairs(0.33, 0.05, 0.03, 0.12), at("ablation"), Ratio("u", {"num": 1.0}, {"den": 1.0}),
                         0.01),
        unit_scenario("AUC gap per dataset, 22% zeros", "sae_probes auc_gap_*",
                      zero_inflated(0.22, normal_q(-0.01, 0.07)), at("sae_probes"), 0.01),
        unit_scenario("SCR score per pair", "scr_* (quarters of the gap, half exactly 0)",
                      discrete_q([-0.5, -0.25, 0, 0.25, 0.5, 0.75, 1.0, 1.25], [3, 6, 50, 12, 10, 6, 9, 4]),
                      at("scr"), 0.02),
        unit_scenario("TPP drop per class", "tpp_* (mostly ~0, a third large)",
                      mixture(0.7, normal_q(0.01, 0.015), beta_q(2, 4)), at("tpp"), 0.01),
        unit_scenario("rare yes/no per latent (p=0.02)", "splitting split_frac, absent_frac as declared proportions",
                      discrete_q([0, 1], [98, 2]), at("splitting"), 0.0, proportion=True),
        unit_scenario("yes/no per latent (p=0.5)", "splitting novel_frac as a declared proportion",
                      discrete_q([0, 1], [50, 50]), at("splitting"), 0.0, proportion=True),
        mom_scenario("mean of task means", "probing probe_loss / top-k accuracy (easy and hard tasks, 32 examples)",
                     mixture(0.4, normal_q(0.05, 0.03, 0.0), normal_q(0.55, 0.1, 0.0)),
                     lambda rng, m, k: rng.exponential(1.0, (m.size, k)) * m[:, None], at("probing"), 32, 0.01),
        mom_scenario("mean of letter means, 45% zero letters", "absorption fraction (per-token fractions)",
                     zero_inflated(0.45, beta_q(1.2, 3.0)),
                     lambda rng, m, k: np.clip(m[:, None] + 0.1 * rng.standard_normal((m.size, k)) * (m[:, None] > 0),
                                               0, 1), at("absorption"), 16, 0.0),  # fmt: skip
        mom_scenario("mean of letter means, 87% zero letters", "absorption full-absorption rate",
                     zero_inflated(0.87, beta_q(1.0, 3.0)),
                     lambda rng, m, k: (rng.random((m.size, k)) < m[:, None]).astype(float), at("absorption"), 16,
                     0.0),
        cluster_scenario("per-token mean, ICC 0.8", "core delta_ce, kl, ce_loss_*, cossim (contexts in documents)",
                         _ctx_mean(0.45, 0.2, 0.1), at("core"), Ratio("u", {"num": 1.0}, {"den": 1.0}), 0.005),
        cluster_scenario("per-token mean, ICC 0.8, skewed", "core kl (right-skewed contexts)",
                         _ctx_mean(0.5, 0.18, 0.1, skew=0.8), at("core"), Ratio("u", {"num": 1.0}, {"den": 1.0}),
                         0.005),
        cluster_scenario("ratio of pooled sums, ICC 0.1", "core fvu, mse, explained_variance",
                         _ctx_fvu(0.15, 0.1, 0.3), at("core"), Ratio("u", {"num": 1.0}, {"den": 1.0}), 0.002),
        cluster_scenario("score of pooled sums", "core ce_loss_score, kl_div_score", _ctx_score(), at("core"),
                         Ratio("u", {"dmg": 1.0}, {"gap": 1.0}, scale=-1.0, offset=1.0), 0.001, "up"),
    ]  # fmt: skip
    rates = {"d": 512, "mu": -2.6, "sd": 0.7, "dead": 0.01, "shape": 0.5, "seed": 7}
    quick_core = [x for x in at("core") if x[1] <= 1024]
    for metric, what in (("dead_frac", "dead_frac, frac_alive"), ("freq_over_1_percent", "freq_over_1_percent"),
                         ("dense_frac", "dense_frac, freq_over_10_percent")):  # fmt: skip
        out.append(density_scenario(f"latent density: {metric}", what, metric, quick_core, rates))
    if board:
        out += board_scenarios(board, sizes)
    return out


def board_scenarios(board: str, sizes: dict[str, list[tuple[str, int]]]) -> list[Scenario]:
    """Plasmode: the committed results' per-unit values of a few headline metrics, pooled over
    the board's SAEs, as the population (the truth is the pool's mean)."""
    from saebench.evaluators import metric_table
    from saebench.results import load_results

    results = load_results([board])
    want = {"n2g": "n2g_f1", "autointerp": "detection_auroc", "sae_probes": "auc_gap_scarcity",
            "scr": "scr_top_20", "tpp": "tpp_top_20", "ablation": "ablation_sparsity_active",
            "probing": "top_1_accuracy", "absorption": "absorption_rate"}  # fmt: skip
    pools: dict[str, list[float]] = {}
    for r in results:
        if want.get(r.evaluator) is None:
            continue
        m = metric_table([r.evaluator], [r])[r.evaluator].get(want[r.evaluator])
        if m is None or m.estimator is None:
            continue
        s = stats.samples_from_json(r.samples).get(m.estimator.unit)
        if s is None:
            continue
        col = m.estimator.col if isinstance(m.estimator, MeanOfMeans) else next(iter(m.estimator.num))
        for v in s.columns.get(col, []):
            if isinstance(v, list):
                vals = [x for x in v if x is not None]
                if vals:
                    pools.setdefault(r.evaluator, []).append(float(np.mean(vals)))
            elif v is not None:
                pools.setdefault(r.evaluator, []).append(float(v))
    return [
        unit_scenario(f"board: {want[ev]} (pooled)", f"{ev}, the committed per-unit values", empirical_q(np.array(p)),
                      [(f"{ev} {pr}", n) for pr, n in sizes[ev]])
        for ev, p in sorted(pools.items()) if len(p) >= 20
    ]  # fmt: skip


# -- the 'before' method: percentile bootstrap over units (saebench until issue 26) ---------------------


def _num_den(sc: Scenario, raw: Any) -> tuple[np.ndarray, np.ndarray, float, float]:
    if sc.kind == "cluster":
        cols, _ = raw
        est = sc.estimator
        num = sum(c * cols[k] for k, c in est.num.items())
        den = sum(c * cols[k] for k, c in est.den.items())
        return num, den, est.scale, est.offset
    num, den = raw
    return num, (np.ones(num.size) if den is None else den), 1.0, 0.0


def old_percentile(sc: Scenario, raw_a: Any, raw_b: Any, rng: np.random.Generator, n_boot: int = 1000) -> tuple:
    """(low, high, se) of the percentile bootstrap over units (contexts one by one; tasks, then
    examples within tasks, for means of means) of a, or of a - b paired (the same resample weights
    for both sides) when ``raw_b`` is given."""
    sides = [raw_a] if raw_b is None else [raw_a, raw_b]
    if sc.kind == "mom":
        n, k = raw_a.shape
        w = stats.resample_weights(n, n_boot, rng)
        inner = rng.integers(0, k, size=(n_boot, n, k))
        means = [np.take_along_axis(np.broadcast_to(x, (n_boot, n, k)), inner, axis=2).mean(2) for x in sides]
        draws = (w * (means[0] - (means[1] if raw_b is not None else 0.0))).sum(1) / n
    else:
        parts = [_num_den(sc, x) for x in sides]
        w = stats.resample_weights(parts[0][0].size, n_boot, rng)
        r = [(w @ num) / (w @ den) for num, den, _, _ in parts]
        scale, offset = parts[0][2], parts[0][3]
        draws = scale * (r[0] - r[1]) if raw_b is not None else offset + scale * r[0]
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi), float(draws.std(ddof=1))


def _before_density(counts: np.ndarray, rng: np.random.Generator, metric: str, n_boot: int = 400) -> tuple:
    from saebench.evaluators.core import density_metrics

    n = counts.shape[0]
    w = stats.resample_weights(n, n_boot, rng)
    draws = [density_metrics(wi @ counts, float(n * T_TOK), 0.1)[metric] for wi in w]
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


# -- running a scenario ----------------------------------------------------------------------------


@dataclass
class Cell:
    scenario: str
    stands_for: str
    size_label: str
    n: int
    before: float
    after: float
    claimed: float
    fp_before: float | None = None
    fp_after: float | None = None
    gate_before: float | None = None
    gate_after: float | None = None
    effect_only: float | None = None
    excludes_estimate_before: float | None = None
    excludes_estimate_after: float | None = None


def run_scenario(sc: Scenario, n: int, label: str, reps: int, seed: int = 0, before: bool = True) -> Cell:
    """Simulate ``reps`` samples of ``n`` units: coverage before/after and paired false positives."""
    rng = np.random.default_rng(seed)
    brng = np.random.default_rng(seed + 1)
    z_m = float(ndtri(1 - (1 - LEVEL) / (2 * FAMILY_M)))
    if sc.kind == "density":
        return _run_density(sc, n, label, reps, rng, brng, before)
    hits_b, hits_a, claimed, fp_b, fp_a, gate_b, gate_a, eff, n_diff = 0, 0, 0, 0, 0, 0, 0, 0, 0
    truth_num, truth_den = 0.0, 0.0
    rows = []
    for _ in range(reps):
        d = sc.draw(rng, n)
        iv = stats.interval(sc.estimator, d.a)
        if sc.truth is None:  # ratio of expected sums, estimated from all draws (consistent)
            num, den, scale, offset = _num_den(sc, d.raw_a)
            truth_num, truth_den = truth_num + float(num.sum()), truth_den + float(den.sum())
        lo_b, hi_b = old_percentile(sc, d.raw_a, None, brng)[:2] if before else (np.nan, np.nan)
        rows.append((iv.value, iv.low, iv.high, lo_b, hi_b))
        diff = stats.difference(sc.estimator, d.a, sc.estimator, d.b)
        bad = (diff.value or 0.0) < 0 if sc.direction == "up" else (diff.value or 0.0) > 0
        if diff.low is not None:
            n_diff += 1
            fp_a += not (diff.low <= 0 <= diff.high)
            gate_a += (not (diff.low <= 0 <= diff.high)) and stats.t_pvalue(diff.value / diff.se, diff.df) < (
                1 - LEVEL
            ) / FAMILY_M
        elif diff.value is not None and sc.min_effect > 0:  # none declared: not judged, cannot fail
            eff += bad and abs(diff.value) > sc.min_effect
        if before:
            lo, hi, se = old_percentile(sc, d.raw_a, d.raw_b, brng)
            out = not (lo <= 0 <= hi)
            fp_b += out
            gate_b += out and abs(diff.value or 0.0) > z_m * se
    if sc.truth is None:
        num, den, scale, offset = _num_den(sc, d.raw_a)
        truth = offset + scale * truth_num / truth_den
    else:
        truth = sc.truth
    for _v, lo, hi, lo_b, hi_b in rows:
        hits_b += lo_b <= truth <= hi_b
        if lo is not None:
            claimed += 1
            hits_a += lo <= truth <= hi
    no_diff = reps - n_diff if reps - n_diff >= 0.1 * reps and sc.min_effect > 0 else 0  # where that is common
    return Cell(sc.name, sc.stands_for, label, n, hits_b / reps if before else math.nan,
                hits_a / claimed if claimed else math.nan, claimed / reps,
                fp_b / reps if before else None, fp_a / n_diff if n_diff else None,
                gate_b / reps if before else None, gate_a / n_diff if n_diff else None,
                eff / no_diff if no_diff else None)  # fmt: skip


def _run_density(sc: Scenario, n: int, label: str, reps: int, rng, brng, before: bool) -> Cell:
    from saebench.evaluators.core import density_intervals_from_counts

    metric = sc.extra["metric"]
    rows = []
    for _ in range(reps):
        counts, docs = sc.draw(rng, n).raw_a
        ivs = density_intervals_from_counts(counts, np.full(n, float(T_TOK)), [f"d{x}" for x in docs], 0.1)
        iv = ivs[metric]
        lo_b, hi_b = _before_density(counts, brng, metric) if before else (np.nan, np.nan)
        rows.append((iv.value, iv.low, iv.high, lo_b, hi_b))
    truth = float(np.mean([r[0] for r in rows]))  # the expected value at this sample size
    claimed = [r for r in rows if r[1] is not None]
    cover_a = np.mean([lo <= truth <= hi for _, lo, hi, _, _ in claimed]) if claimed else math.nan
    cover_b = np.mean([lo <= truth <= hi for _, _, _, lo, hi in rows]) if before else math.nan
    exc_b = np.mean([not (lo <= v <= hi) for v, _, _, lo, hi in rows]) if before else None
    exc_a = np.mean([not (lo <= v <= hi) for v, lo, hi, _, _ in claimed]) if claimed else None
    return Cell(sc.name, sc.stands_for, label, n, float(cover_b), float(cover_a), len(claimed) / reps,
                excludes_estimate_before=exc_b, excludes_estimate_after=exc_a)  # fmt: skip


# -- report ----------------------------------------------------------------------------------------------


def pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def table(cells: list[Cell]) -> str:
    head = ("| scenario (stands for) | size | n | coverage before | coverage after (claimed) | "
            "paired FP before / after | gate FP m=90 before / after | effect-only FP |")  # fmt: skip
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        extra = ""
        if c.excludes_estimate_before is not None:
            extra = f" (excludes its estimate: {pct(c.excludes_estimate_before)})"
        lines.append(
            f"| {c.scenario} ({c.stands_for}) | {c.size_label} | {c.n} | {pct(c.before)}{extra} | "
            f"{pct(c.after)} ({pct(c.claimed)}) | {pct(c.fp_before)} / {pct(c.fp_after)} | "
            f"{pct(c.gate_before)} / {pct(c.gate_after)} | {pct(c.effect_only)} |"
        )
    return "\n".join(lines)


def reference_cells(reps: int, before: bool = True, only: str = "") -> list[Cell]:
    """Textbook distributions at a ladder of unit counts, for context (not tied to an evaluator)."""
    refs = [
        unit_scenario("normal", "reference", normal_q(0, 1), []),
        unit_scenario("exponential", "reference (skewness 2)", lambda u: -np.log1p(-np.clip(u, 0, 1 - 1e-12)), []),
        unit_scenario(
            "log-normal, sigma 1", "reference (skewness 6.2)", lambda u: np.exp(ndtri(np.clip(u, 1e-12, 1 - 1e-12))), []
        ),  # fmt: skip
        unit_scenario("0/1 with p = 0.1, mean_of", "reference", discrete_q([0, 1], [90, 10]), []),
        unit_scenario(
            "0/1 with p = 0.1, proportion_of", "reference", discrete_q([0, 1], [90, 10]), [], proportion=True
        ),  # fmt: skip
    ]
    refs = [sc for sc in refs if only in sc.name]
    return [run_scenario(sc, n, "-", reps, before=before) for sc in refs for n in (2, 4, 8, 16, 32, 64)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2000, help="simulated samples per cell")
    ap.add_argument("--max-n", type=int, default=4000, help="skip sizes above this many units")
    ap.add_argument("--board", default=None, help="results folder for plasmode scenarios (leaderboard/results)")
    ap.add_argument("--no-before", action="store_true", help="skip the old method (faster)")
    ap.add_argument("--only", default="", help="run scenarios whose name contains this")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cells = []
    for sc in scenarios(default_sizes(), args.board):
        if args.only and args.only not in sc.name:
            continue
        by_n: dict[int, list[str]] = {}
        for label, n in sc.sizes:
            by_n.setdefault(n, []).append(label)
        for n, labels in by_n.items():
            label = labels[0] + "".join(f", {x.split(' ')[-1]}" for x in labels[1:])
            if n > args.max_n or (sc.kind == "density" and n > 1024):
                continue
            reps = args.reps if n <= 256 else max(200, args.reps // 5)
            c = run_scenario(sc, n, label, reps, before=not args.no_before)
            cells.append(c)
            print(f"{sc.name[:40]:40s} {label:22s} n={n:5d} before {pct(c.before):>6s} after {pct(c.after):>6s} "
                  f"claimed {pct(c.claimed):>6s} FP {pct(c.fp_before)}/{pct(c.fp_after)} gate "
                  f"{pct(c.gate_before)}/{pct(c.gate_after)} effect-only {pct(c.effect_only)} "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)  # fmt: skip
    cells += reference_cells(args.reps, before=not args.no_before, only=args.only)
    md = table(cells)
    print("\n" + md)
    print(f"\n{args.reps} simulated samples per cell (a fifth above 256 units); {time.perf_counter() - t0:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
