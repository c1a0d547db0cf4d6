"""The gate's interval arithmetic: metrics without an interval, the Holm family, Welch from stored
standard errors. Pure results built in memory, no model."""

from __future__ import annotations

import math

import pytest

from saebench import stats
from saebench.compare import Row, _family_wise, compare_metric, difference_interval
from saebench.evaluators.base import Metric
from saebench.results import Result, SAERecord


def _result(values: list[float] | None, metric: float, unc: dict | None = None, unit: str = "pair") -> Result:
    samples = {}
    if values is not None:
        ids = [f"p{i}" for i in range(len(values))]
        samples = {unit: {"unit": unit, "ids": ids, "columns": {"x": list(values)}}}
    return Result(
        evaluator="toy",
        run_key="k",
        config={"seed": 0},
        metrics={"x": metric},
        samples=samples,
        uncertainty={"x": unc} if unc else {},
        sae=SAERecord(name="s", source="x", architecture="topk", d_in=4, d_sae=8, fingerprint="f"),
    )


def _decl(min_effect: float) -> Metric:
    return Metric("x", "a score per pair", "up", True, "", "", min_effect, stats.mean_of("pair", "x"))


def test_too_few_units_judged_by_the_minimum_effect_alone_and_the_row_says_so():
    base = _result([0.5, 0.3], 0.4)
    worse = _result([0.2, 0.2], 0.2)
    row = compare_metric("x", _decl(0.02), worse, base, {})
    assert row.verdict == "WORSE" and row.low is None
    assert row.basis.startswith("minimum effect only") and "fewer than 8" in row.basis
    small = _result([0.5, 0.29], 0.395)
    assert compare_metric("x", _decl(0.02), small, base, {}).verdict == "within noise"


def test_no_interval_and_no_minimum_effect_cannot_fail_the_gate():
    base, new = _result([0.9], 0.9, unit="latent"), _result([0.1], 0.1, unit="latent")
    decl = Metric("x", "autointerp-like", "up", True, "", "", 0.0, stats.mean_of("latent", "x"))
    row = compare_metric("x", decl, new, base, {})
    assert row.verdict == "changed" and not row.failed and row.basis.startswith("not judged")
    forced = compare_metric("x", decl, new, base, {"x": (0.05, False)})  # a minimum effect given: judged
    assert forced.verdict == "WORSE"


def test_holm_keeps_what_bonferroni_would_drop():
    """40 metrics, two moved: p ~ 1e-6 and p ~ 0.00128. Bonferroni (0.05/40 = 0.00125 for every
    metric) would drop the second; Holm compares the second smallest p with 0.05/39 and keeps it.
    The same statistic from 11 units (t, 10 degrees of freedom) is far from significant."""
    z_strong, z_edge = 4.9, 3.2213  # two-sided normal p ~ 1e-6 and ~0.001276
    rows = [Row("s", "e", f"m{i}", "down", 1, 1, 0.0, -1, 1, True, 0, "within noise", 1.0) for i in range(38)]
    rows.append(Row("s", "e", "a", "down", 1, 2, z_strong, 0.5, 9, True, 0, "WORSE", 1.0))
    rows.append(Row("s", "e", "b", "down", 1, 2, z_edge, 0.1, 6, True, 0, "WORSE", 1.0))
    assert stats.t_pvalue(z_edge, None) > 0.05 / 40  # Bonferroni over 40 would demote it
    assert stats.t_pvalue(z_edge, None) <= 0.05 / 39
    _family_wise(rows)
    assert rows[-2].verdict == "WORSE" and rows[-1].verdict == "WORSE"
    rows[-1].df = 10.0  # the same statistic from 11 units: t with 10 degrees of freedom is far less sure
    rows[-1].verdict = "WORSE"
    _family_wise(rows)
    assert rows[-1].verdict == "within noise" and "Holm over 40" in rows[-1].basis


def test_stored_standard_errors_give_welch_t_with_their_degrees_of_freedom():
    base = _result(None, 0.30, {"se": 0.01, "df": 21.0, "ci_low": 0.28, "ci_high": 0.32})
    new = _result(None, 0.35, {"se": 0.02, "df": 9.0, "ci_low": 0.31, "ci_high": 0.39})
    low, high, paired, se, df, _ = difference_interval(None, "x", new, base)
    want_se, want_df = stats.welch(0.02, 9.0, 0.01, 21.0)
    assert not paired and se == pytest.approx(math.hypot(0.01, 0.02)) and df == pytest.approx(want_df)
    assert high - 0.05 == pytest.approx(stats.t_quantile(want_df) * want_se)
    old = _result(None, 0.30, {"se": 0.01, "ci_low": 0.28, "ci_high": 0.32})  # written before issue 26: no df
    low, high, _, se, df, _ = difference_interval(None, "x", new, old)
    assert df is None and high - 0.05 == pytest.approx(1.959964 * se, rel=1e-5)
