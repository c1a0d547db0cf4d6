"""Intervals: nominal coverage on synthetic data with a known mean, paired differences, estimators."""

from __future__ import annotations

import numpy as np
import pytest

from saebench.stats import MeanOfMeans, Ratio, Samples, difference, estimate, interval, mean_of


def _samples(values, ids=None, col="x"):
    ids = ids if ids is not None else [str(i) for i in range(len(values))]
    return {"u": Samples("u", ids, {col: list(values)})}


def test_mean_interval_covers_the_true_mean_at_its_nominal_rate():
    rng = np.random.default_rng(0)
    hits, widths = 0, []
    reps, n, mu = 400, 40, 1.0
    for r in range(reps):
        x = rng.normal(mu, 2.0, n)
        iv = interval(mean_of("u", "x"), _samples(x), n_boot=500, seed=r)
        hits += iv.low <= mu <= iv.high
        widths.append(iv.high - iv.low)
        assert iv.value == pytest.approx(x.mean()) and iv.n == n
    coverage = hits / reps
    # percentile bootstrap at n = 40 is known to under-cover slightly; 95% nominal
    assert 0.91 <= coverage <= 0.98, coverage
    # and the interval has the width theory says (2 * 1.96 * sigma / sqrt(n))
    assert np.mean(widths) == pytest.approx(2 * 1.96 * 2.0 / np.sqrt(n), rel=0.1)


def test_two_level_interval_covers_a_mean_of_task_means():
    rng = np.random.default_rng(1)
    hits, reps, mu = 0, 200, 0.5
    for r in range(reps):
        task_means = rng.normal(mu, 0.1, 20)
        lists = [list(rng.normal(m, 0.3, 16)) for m in task_means]
        s = {"task": Samples("task", [f"t{i}" for i in range(20)], {"loss": lists})}
        iv = interval(MeanOfMeans("task", "loss"), s, n_boot=400, seed=r)
        hits += iv.low <= mu <= iv.high
    assert 0.9 <= hits / reps <= 0.995, hits / reps


def test_ratio_estimator_is_the_pooled_ratio_and_drops_undefined_units():
    s = {"seq": Samples("seq", ["a", "b", "c"], {"err": [1.0, 2.0, None], "var": [4.0, 4.0, 4.0]})}
    est = Ratio("seq", {"err": 1.0}, {"var": 1.0}, scale=-1.0, offset=1.0)  # 1 - Σerr/Σvar
    assert estimate(est, s) == pytest.approx(1 - 3 / 8)
    assert estimate(mean_of("seq", "err"), s) == pytest.approx(1.5)
    assert estimate(mean_of("other", "err"), s) is None


def test_paired_difference_of_identical_units_is_exactly_zero_and_a_shift_is_detected():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, 50)
    a = _samples(x)
    d = difference(mean_of("u", "x"), a, mean_of("u", "x"), _samples(x))
    assert d.paired and d.value == 0 and d.low == 0 and d.high == 0
    shifted = difference(mean_of("u", "x"), _samples(x + 0.05), mean_of("u", "x"), a)
    assert shifted.paired and shifted.low > 0  # a small shift of every unit: clearly detected when paired
    other_ids = _samples(x + 0.05, ids=[f"z{i}" for i in range(50)])
    unpaired = difference(mean_of("u", "x"), other_ids, mean_of("u", "x"), a)
    assert not unpaired.paired and unpaired.low < 0 < unpaired.high  # the same shift is noise when unpaired
