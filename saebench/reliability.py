"""Training-seed reliability: which metrics can rank SAE configurations (issue 20).

Every interval on the board covers the sampling of data for one set of weights. A user comparing
architectures compares *training runs*, and retraining moves every metric. Given results of
several configurations, each trained with two or more seeds and evaluated on the same tokens and
profile, :func:`reliability` reports per headline metric:

- ``data_se``: the mean data-sampling standard error of one run (today's intervals);
- ``seed_sd``: the training-seed standard deviation, pooled over configurations (one-way ANOVA
  within-group mean square, df = Σ (seeds − 1));
- ``between_sd``: the spread of the configurations' true means, sqrt(max(0, (MSB − MSW) / n)) with
  n seeds per configuration (the harmonic mean when unbalanced);
- ``icc``: ICC(1) = (MSB − MSW) / (MSB + (n − 1) MSW), the share of a single run's variance that is
  between configurations (Shrout & Fleiss 1979); ``ratio`` = between variance / seed variance;
- ``tau``: rank stability, Kendall's τ of the configuration ranking between every pair of seeds,
  averaged (seed k of each configuration is one "replicate board");
- a verdict: ``ranks architectures`` (ICC ≥ 0.75 with its 95% lower bound ≥ 0.5, and τ ≥ 0.6: Koo &
  Li's "good" reliability, judged with its interval, and a ranking that mostly survives a reseed),
  ``separates only large differences`` (ICC ≥ 0.5), ``cannot rank at this profile`` (below).

A configuration's name is its SAE name without a trailing ``-s<seed>`` (the zoo's convention:
``relu-2304-l0_32`` is seed 0, ``relu-2304-l0_32-s1`` seed 1). Refused in one line, naming the
runs: a configuration with fewer than 2 seeds, or results of one evaluator produced on different
tokens or profiles. ``saebench compare --seed-variance FILE`` adds ``seed_sd`` to its noise model.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from saebench.errors import SaebenchError
from saebench.evaluators import metric_table
from saebench.io import atomic_write_bytes
from saebench.results import Result, load_results

_SEED = re.compile(r"^(?P<config>.+)-s(?P<seed>\d+)$")
#: config keys that must agree between runs of one evaluator (what makes two numbers comparable)
COMPARABLE = ("model", "hook", "profile", "tokens", "ctx_len", "seed", "corpus", "evaluator_config")
VERDICTS = ("ranks architectures", "separates only large differences", "cannot rank at this profile")


def config_and_seed(sae_name: str) -> tuple[str, int]:
    """``relu-2304-l0_32-s2`` → (``relu-2304-l0_32``, 2); a name without the suffix is seed 0."""
    m = _SEED.match(sae_name)
    return (m["config"], int(m["seed"])) if m else (sae_name, 0)


@dataclass
class MetricReliability:
    evaluator: str
    metric: str
    n_configs: int
    n_seeds: float  # per configuration (harmonic mean when unbalanced)
    data_se: float | None
    seed_sd: float
    seed_df: int
    between_sd: float
    icc: float | None
    ratio: float | None
    tau: float | None
    verdict: str
    icc_low: float | None = None  # 95% interval of ICC(1) from the F distribution (Shrout & Fleiss 1979)
    icc_high: float | None = None
    tau_min: float | None = None  # the smallest τ over the pairs of seeds
    runs: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)  # config → seed → [value, data se]


def _kendall_tau(a: list[float], b: list[float]) -> float | None:
    """Kendall's τ-b between two rankings of the same configurations (ties counted out)."""
    from scipy.stats import kendalltau

    if len(a) < 3:
        return None
    t = kendalltau(a, b).statistic
    return None if t is None or math.isnan(t) else float(t)


def icc_interval(
    msb: float, msw: float, k: int, n0: float, df_within: int, level: float = 0.95
) -> tuple[float, float] | None:
    """95% interval of ICC(1) (Shrout & Fleiss 1979, table 4): F0 = MSB/MSW on (k − 1, N − k) df,
    F_L = F0 / F_{1−α/2}(k − 1, N − k), F_U = F0 · F_{1−α/2}(N − k, k − 1), ICC = (F − 1)/(F + n − 1)."""
    from scipy.stats import f as fdist

    if k < 2 or df_within < 1 or msw <= 0:
        return None
    f0, q = msb / msw, 1 - (1 - level) / 2
    fl, fu = f0 / fdist.ppf(q, k - 1, df_within), f0 * fdist.ppf(q, df_within, k - 1)
    return float((fl - 1) / (fl + n0 - 1)), float((fu - 1) / (fu + n0 - 1))


def verdict(icc: float | None, tau: float | None, icc_low: float | None = None) -> str:
    """The plain verdict from ICC(1), its 95% lower bound and rank stability (see the module doc for
    the thresholds). "Ranks" needs a measured τ (3 or more configurations) and, where the interval
    is known, a lower bound of at least 0.5: Koo & Li judge reliability by the interval, not the
    point, and with few configurations an ICC of 0.8 can rest on almost nothing."""
    firm = icc_low is None or icc_low >= 0.5
    if icc is not None and icc >= 0.75 and firm and tau is not None and tau >= 0.6:
        return VERDICTS[0]
    if icc is not None and icc >= 0.5:
        return VERDICTS[1]
    return VERDICTS[2]


def metric_reliability(
    evaluator: str, metric: str, runs: dict[str, dict[int, tuple[float, float | None]]]
) -> MetricReliability:
    """Reliability of one metric from ``{config: {seed: (value, data se)}}`` (every config ≥ 2 seeds)."""
    groups = {c: [v for _, (v, _) in sorted(s.items())] for c, s in runs.items()}
    k = len(groups)
    sizes = np.array([len(v) for v in groups.values()], dtype=float)
    means = np.array([np.mean(v) for v in groups.values()])
    grand = float(np.sum(sizes * means) / sizes.sum())
    ss_within = sum(float(np.sum((np.array(v) - np.mean(v)) ** 2)) for v in groups.values())
    df_within = int(sizes.sum() - k)
    msw = ss_within / df_within
    n0 = float(k / np.sum(1.0 / sizes))  # harmonic mean group size
    msb = float(np.sum(sizes * (means - grand) ** 2) / (k - 1)) if k > 1 else 0.0
    between_var = max(0.0, (msb - msw) / n0)
    icc = (msb - msw) / (msb + (n0 - 1) * msw) if k > 1 and (msb + (n0 - 1) * msw) > 0 else None
    ratio = between_var / msw if msw > 0 else (math.inf if between_var > 0 else None)
    taus = []
    common = sorted(set.intersection(*(set(s) for s in runs.values())))
    for s1, s2 in itertools.combinations(common, 2):
        t = _kendall_tau([runs[c][s1][0] for c in runs], [runs[c][s2][0] for c in runs])
        if t is not None:
            taus.append(t)
    tau = float(np.mean(taus)) if taus else None
    ci = icc_interval(msb, msw, k, n0, df_within)
    ses = [se for s in runs.values() for _, se in s.values() if se is not None and math.isfinite(se)]
    return MetricReliability(
        evaluator=evaluator,
        metric=metric,
        n_configs=k,
        n_seeds=round(n0, 3),
        data_se=float(np.sqrt(np.mean(np.square(ses)))) if ses else None,
        seed_sd=math.sqrt(msw),
        seed_df=df_within,
        between_sd=math.sqrt(between_var),
        icc=None if icc is None else float(icc),
        ratio=None if ratio is None else float(ratio),
        tau=tau,
        verdict=verdict(icc, tau, None if ci is None else ci[0]),
        icc_low=None if ci is None else ci[0],
        icc_high=None if ci is None else ci[1],
        tau_min=float(min(taus)) if taus else None,
        runs={c: {str(seed): [v, se] for seed, (v, se) in sorted(s.items())} for c, s in sorted(runs.items())},
    )


def _check_comparable(results: list[Result]) -> None:
    """One evaluator's results must come from the same tokens and profile: refuse naming the runs."""
    by_ev: dict[str, dict[str, list[str]]] = {}
    for r in results:
        key = json.dumps({k: r.config.get(k) for k in COMPARABLE}, sort_keys=True, default=str)
        by_ev.setdefault(r.evaluator, {}).setdefault(key, []).append(r.sae.name)
    for ev, keys in sorted(by_ev.items()):
        if len(keys) > 1:
            parts = [", ".join(sorted(names)) for names in keys.values()]
            raise SaebenchError(
                f"{ev} results were produced on different tokens or profiles ({' | '.join(parts)}); "
                "evaluate every seed with the same --profile, tokens and settings"
            )


def reliability(results: list[Result]) -> list[MetricReliability]:
    """Per headline metric of every evaluator present, the reliability over training seeds."""
    _check_comparable(results)
    runs: dict[tuple[str, str], dict[str, dict[int, tuple[float, float | None]]]] = {}
    seeds_of: dict[str, set[int]] = {}
    evaluators = sorted({r.evaluator for r in results})
    decl = metric_table(evaluators, results)
    for r in results:
        config, seed = config_and_seed(r.sae.name)
        seeds_of.setdefault(config, set()).add(seed)
        for m in decl.get(r.evaluator, {}).values():
            v = r.metrics.get(m.name)
            if not m.headline or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            se = r.uncertainty.get(m.name, {}).get("se")
            runs.setdefault((r.evaluator, m.name), {}).setdefault(config, {})[seed] = (float(v), se)
    short = sorted(c for c, s in seeds_of.items() if len(s) < 2)
    if short:
        raise SaebenchError(
            f"configuration(s) with fewer than 2 seeds: {', '.join(short)}; train and evaluate at least two "
            "(`saebench zoo build --seeds`; names <config>-s<seed>)"
        )
    if len(seeds_of) < 2:
        raise SaebenchError("reliability needs at least 2 configurations, each with 2 or more seeds")
    out = []
    for (ev, name), by_config in sorted(runs.items()):
        usable = {c: s for c, s in by_config.items() if len(s) >= 2}
        if len(usable) >= 2:
            out.append(metric_reliability(ev, name, usable))
    return out


def icc_text(r: MetricReliability) -> str:
    """ICC(1) with its 95% interval, as every table shows it."""
    if r.icc is None:
        return "–"
    ci = "" if r.icc_low is None else f" [{r.icc_low:.2f}, {r.icc_high:.2f}]"
    return f"{r.icc:.3g}{ci}"


def render(rows: list[MetricReliability]) -> str:
    """The reliability table in markdown."""
    from tabulate import tabulate

    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.3g}"

    body = [
        [r.evaluator, r.metric, r.n_configs, f(r.n_seeds), f(r.data_se), f(r.seed_sd), f(r.between_sd),
         icc_text(r), f(r.ratio), f(r.tau) + ("" if r.tau_min is None else f" (min {r.tau_min:.2g})"), r.verdict]
        for r in rows
    ]  # fmt: skip
    headers = ["evaluator", "metric", "configs", "seeds", "data SE", "seed SD", "between SD", "ICC [95%]", "ratio",
               "τ", "verdict"]  # fmt: skip
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def write_reliability(paths: list[str | Path], out: str | Path) -> list[MetricReliability]:
    """Reliability of the results under ``paths``, written to ``out`` (JSON) atomically."""
    rows = reliability(load_results(list(paths)))
    payload = {"schema": "saebench-reliability/1", "metrics": [asdict(r) for r in rows]}
    atomic_write_bytes(Path(out), (json.dumps(payload, indent=1) + "\n").encode())
    return rows


def load_reliability(path: str | Path) -> dict[tuple[str, str], MetricReliability]:
    """``{(evaluator, metric): row}`` from a reliability file (``saebench reliability -o``); a missing
    or malformed file is one line naming it."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("schema") != "saebench-reliability/1":
            raise ValueError("not a saebench reliability file")
        return {(m["evaluator"], m["metric"]): MetricReliability(**m) for m in data["metrics"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SaebenchError(
            f"cannot read the reliability file {path} ({exc}); write one with `saebench reliability RESULTS -o FILE`"
        ) from None


def load_seed_variance(path: str | Path) -> dict[tuple[str, str], tuple[float, int]]:
    """``{(evaluator, metric): (seed SD, its df)}`` from a reliability file (for ``compare``)."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("schema") != "saebench-reliability/1":
            raise ValueError("not a saebench reliability file")
        return {(m["evaluator"], m["metric"]): (float(m["seed_sd"]), int(m["seed_df"])) for m in data["metrics"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SaebenchError(
            f"cannot read the reliability file {path} ({exc}); write one with `saebench reliability RESULTS -o FILE`"
        ) from None
