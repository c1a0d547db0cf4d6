"""Intervals hold their 95% at the sizes the profiles use: every estimator the evaluators use, on
simulated data with a known truth (the scenarios of ``benchmarks/coverage.py``, fewer simulations).

No model: numpy, ``saebench.stats`` and the evaluators' declared profile sizes. The full table
(2,000 simulations per cell, the old method beside the new) is ``python benchmarks/coverage.py``
and docs/statistics.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import coverage as cov  # noqa: E402  (benchmarks/coverage.py)

REPS = 300
MAX_N = 64  # the quick profile's unit counts, and the standard profile's up to this size
BAR = 0.93  # an interval claimed at a default size must cover at least this often


@pytest.fixture(scope="module")
def scenarios():
    return cov.scenarios(cov.default_sizes())


def test_default_sizes_come_from_the_profiles():
    sizes = dict(cov.default_sizes())
    assert ("quick", 192) in sizes["n2g"] and ("quick", 40) in sizes["ablation"] and ("quick", 8) in sizes["autointerp"]
    assert ("quick", 3) in sizes["scr"] and ("quick", 4) in sizes["tpp"] and ("quick", 64) in sizes["core"]


def test_every_estimator_covers_at_least_93_percent_where_it_claims_an_interval(scenarios):
    """At each default size up to 64 units: an interval claimed in at least 40 of the simulated
    samples holds the truth in >= 93% of them; below that it must not be claimed at all."""
    failures, checked = [], 0
    for sc in scenarios:
        for n in sorted({n for _, n in sc.sizes if n <= MAX_N}):
            cell = cov.run_scenario(sc, n, "test", REPS, seed=11, before=False)
            if cell.claimed * REPS >= 40:
                checked += 1
                if cell.after < BAR:
                    failures.append(f"{sc.name} at n={n}: {cell.after:.1%} of {cell.claimed:.0%} claimed")
            elif cell.claimed > 0:
                assert cell.after >= 0.8, f"{sc.name} at n={n}: rare intervals that miss ({cell.after:.1%})"
    assert checked >= 15
    assert not failures, "intervals below 93% coverage: " + "; ".join(failures)


def test_no_interval_where_no_method_holds(scenarios):
    """SCR's 2 pairs and TPP's 4 classes at the quick profile: no interval (the board prints n)."""
    for name, n in (("SCR score per pair", 2), ("SCR score per pair", 4), ("TPP drop per class", 4)):
        sc = next(s for s in scenarios if s.name == name)
        assert cov.run_scenario(sc, n, "test", 50, before=False).claimed == 0


def test_documents_matter_the_old_context_bootstrap_did_not_hold(scenarios):
    """Contexts of one document share their loss: resampled one by one (the old method) the
    interval of ΔCE at the quick profile covered far less than 95%, and the paired comparison of
    two equally good SAEs declared a winner far more often than 5%; by document it holds."""
    sc = next(s for s in scenarios if s.name == "per-token mean, ICC 0.8")
    cell = cov.run_scenario(sc, 64, "test", 200, seed=3)
    assert cell.before < 0.75 and cell.fp_before > 0.25
    assert cell.after >= BAR and cell.fp_after <= 0.09


def test_paired_comparison_false_positives_stay_near_5_percent_and_the_gate_near_zero(scenarios):
    for name, n in (("latent score, 48% zeros", 16), ("ratio of pooled sums, ICC 0.1", 64), ("mean of task means", 57)):
        sc = next(s for s in scenarios if s.name == name)
        cell = cov.run_scenario(sc, n, "test", REPS, seed=5, before=False)
        assert cell.fp_after <= 0.08, (name, cell.fp_after)
        assert cell.gate_after <= 0.01, (name, cell.gate_after)


def test_density_intervals_hold_their_estimate_and_their_target(scenarios):
    for sc in (s for s in scenarios if s.kind == "density"):
        cell = cov.run_scenario(sc, 64, "test", 150, seed=2, before=False)
        assert cell.excludes_estimate_after == 0, sc.name
        assert cell.after >= BAR, (sc.name, cell.after)


def test_the_exact_proportion_interval_holds_near_zero_where_the_general_one_cannot():
    rare = cov.discrete_q([0, 1], [90, 10])
    exact = cov.unit_scenario("p=0.1 exact", "test", rare, [], proportion=True)
    general = cov.unit_scenario("p=0.1 general", "test", rare, [])
    e = cov.run_scenario(exact, 16, "test", REPS, before=False)
    g = cov.run_scenario(general, 16, "test", REPS, before=False)
    assert e.claimed == 1 and e.after >= 0.95
    assert g.claimed < 0.5  # the general interval mostly refuses (too few distinct values) rather than mislead
    assert np.isfinite(e.after)
