"""Intervals: nominal coverage on synthetic data with a known mean, paired differences, estimators,
independent units (documents), small samples, proportions, density metrics and how cells show them."""

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
    assert d.paired and d.value == 0 and d.low is None and d.reason == "no spread between units"  # exactly equal
    y = x + 0.05 + rng.normal(0, 0.01, 50)
    shifted = difference(mean_of("u", "x"), _samples(y), mean_of("u", "x"), a)
    assert shifted.paired and shifted.low > 0  # a small shift of every unit: clearly detected when paired
    other_ids = _samples(y, ids=[f"z{i}" for i in range(50)])
    unpaired = difference(mean_of("u", "x"), other_ids, mean_of("u", "x"), a)
    assert not unpaired.paired and unpaired.low < 0 < unpaired.high  # the same shift is noise when unpaired


# -- issue 26: independent units, small samples, proportions, densities, display ---------------------


def test_too_few_units_give_no_interval_and_say_why():
    iv = interval(mean_of("u", "x"), _samples([0.1, 0.4]))
    assert iv.value == pytest.approx(0.25) and iv.low is None and iv.se is None
    assert "fewer than 8" in iv.reason and iv.to_dict()["n_clusters"] == 2
    iv8 = interval(mean_of("u", "x"), _samples(np.linspace(0, 1, 8)))
    assert iv8.low < 0.5 < iv8.high and iv8.df == 7 and iv8.method == "studentized-bootstrap+t"


def test_a_sample_without_spread_claims_no_interval():
    iv = interval(mean_of("u", "x"), _samples([0.0] * 20))
    assert iv.value == 0 and iv.low is None and iv.reason == "no spread between units"


def test_normal_data_get_at_least_the_t_interval():
    """The interval holds the classical t interval (exact for normal data) at any size >= 8."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, 10)
    iv = interval(mean_of("u", "x"), _samples(x))
    h = 2.2621571627409915 * x.std(ddof=1) / np.sqrt(10)  # t_{9, 0.975}
    assert iv.low <= x.mean() - h + 1e-12 and iv.high >= x.mean() + h - 1e-12
    assert iv.se == pytest.approx(x.std(ddof=1) / np.sqrt(10))


def test_contexts_of_one_document_are_one_independent_unit():
    """Four copies of each of 10 documents' contexts: the cluster interval is as wide as over the
    10 documents alone, the context-level one would be half as wide (and wrong)."""
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, 10)
    rep = np.repeat(x, 4)
    docs = [f"d{i}" for i in range(10) for _ in range(4)]
    clustered = {"u": Samples("u", [str(i) for i in range(40)], {"x": list(rep)}, docs, "document")}
    by_doc = interval(mean_of("u", "x"), clustered)
    alone = interval(mean_of("u", "x"), _samples(x))
    naive = interval(mean_of("u", "x"), _samples(rep))
    assert by_doc.se == pytest.approx(alone.se) and by_doc.n == 40 and by_doc.n_clusters == 10
    assert by_doc.to_dict()["cluster_unit"] == "document" and naive.to_dict()["cluster_unit"] == "u"
    assert naive.se < 0.6 * by_doc.se
    one_doc = {"u": Samples("u", [str(i) for i in range(40)], {"x": list(rep)}, ["d"] * 40, "document")}
    assert interval(mean_of("u", "x"), one_doc).low is None  # 40 contexts, 1 document: no interval


def test_samples_round_trip_with_and_without_clusters():
    s = Samples("sequence", ["a", "b"], {"x": [1.0, 2.0]}, ["d1", "d1"], "document")
    assert Samples.from_dict(s.to_dict()) == s
    old = {"unit": "sequence", "ids": ["a", "b"], "columns": {"x": [1.0, 2.0]}}  # results before issue 26
    assert Samples.from_dict(old).clusters is None and "clusters" not in Samples.from_dict(old).to_dict()


def test_paired_difference_resamples_the_same_documents_for_both_sides():
    rng = np.random.default_rng(5)
    docs = [f"d{i // 3}" for i in range(60)]
    base = np.repeat(rng.normal(0, 1, 20), 3) + rng.normal(0, 0.1, 60)
    ids = [str(i) for i in range(60)]
    a = {"u": Samples("u", ids, {"x": list(base + 0.05)}, docs, "document")}
    b = {"u": Samples("u", ids, {"x": list(base)}, None)}  # an old result of the same contexts: no document ids
    d = difference(mean_of("u", "x"), a, mean_of("u", "x"), b)
    assert d.paired and d.n_clusters == 20 and d.value == pytest.approx(0.05) and d.se is None
    assert d.low is None and "no spread" in d.reason  # a constant shift: exactly known, judged by its size
    noisy = {"u": Samples("u", ids, {"x": list(base + 0.05 + rng.normal(0, 0.02, 60))}, docs, "document")}
    d = difference(mean_of("u", "x"), noisy, mean_of("u", "x"), b)
    assert d.paired and d.low > 0 and d.df == 19


def test_unpaired_difference_is_welch_t():
    from saebench.stats import t_quantile, welch

    rng = np.random.default_rng(6)
    x, y = rng.normal(0, 1, 12), rng.normal(0, 3, 30)
    d = difference(mean_of("u", "x"), _samples(x), mean_of("u", "x"), _samples(y, ids=[f"z{i}" for i in range(30)]))
    sa, sb = x.std(ddof=1) / np.sqrt(12), y.std(ddof=1) / np.sqrt(30)
    se, df = welch(sa, 11, sb, 29)
    assert not d.paired and d.method == "welch-t" and d.se == pytest.approx(se) and d.df == pytest.approx(df)
    assert df == pytest.approx((sa**2 + sb**2) ** 2 / (sa**4 / 11 + sb**4 / 29))
    assert d.high - d.value == pytest.approx(t_quantile(df) * se)


def test_declared_proportion_gets_the_exact_binomial_interval():
    from saebench.stats import estimator_from_dict, estimator_to_dict, proportion_of

    est = proportion_of("u", "x")
    iv = interval(est, _samples([0] * 10))
    assert iv.method == "clopper-pearson" and iv.low == 0 and iv.high == pytest.approx(1 - 0.025 ** (1 / 10))
    iv = interval(est, _samples([1] * 3 + [0] * 7))
    assert iv.low == pytest.approx(0.06673951, rel=1e-6) and iv.high == pytest.approx(0.65245285, rel=1e-6)
    assert estimator_from_dict(estimator_to_dict(est)) == est  # stored with its kind
    assert interval(est, _samples([0.5, 0.2] * 5)).method != "clopper-pearson"  # not 0/1: the general interval


def test_mean_of_means_interval_is_over_the_units_means():
    rng = np.random.default_rng(7)
    lists = [list(rng.normal(m, 0.5, 30)) for m in rng.normal(1.0, 0.2, 12)]
    s = {"task": Samples("task", [f"t{i}" for i in range(12)], {"loss": lists})}
    iv = interval(MeanOfMeans("task", "loss"), s)
    means = np.array([np.mean(x) for x in lists])
    assert iv.value == pytest.approx(means.mean()) and iv.se == pytest.approx(means.std(ddof=1) / np.sqrt(12))


def test_density_interval_holds_its_estimate_where_the_bootstrap_excluded_it():
    """24 documents; 40 of 400 latents fire in one document only: removing that document kills
    them, so every bootstrap resample that misses it has a higher dead fraction (the old interval
    lay above its estimate). The jackknife interval is symmetric around the estimate."""
    from saebench.evaluators.core import density_intervals_from_counts

    rng = np.random.default_rng(8)
    counts = rng.poisson(0.5, (48, 400))
    counts[:, :40] = 0
    for j in range(40):
        counts[2 * (j % 24), j] = 1  # latent j fires once, in document j % 24
    counts[:, 390:] = 0  # 10 latents dead
    docs = [f"d{i // 2}" for i in range(48)]
    ivs = density_intervals_from_counts(counts, np.full(48, 127.0), docs, 0.1)
    dead = ivs["dead_frac"]
    assert dead.value == pytest.approx(10 / 400) and dead.low <= dead.value <= dead.high
    assert dead.n_clusters == 24 and dead.cluster_unit == "document" and dead.method == "jackknife-t"
    assert "fresh token sample" in dead.to_dict()["target"]
    assert ivs["frac_alive"].low <= ivs["frac_alive"].value <= ivs["frac_alive"].high


def test_cells_show_asymmetric_intervals_by_their_ends_and_small_samples_by_their_count():
    from saebench.display import with_interval

    assert with_interval(0.5, {"ci_low": 0.4, "ci_high": 0.6}) == "0.5 ± 0.1"
    assert with_interval(0.0228, {"ci_low": 0.0384, "ci_high": 0.061}) == "0.0228 [0.0384, 0.061]"  # excludes it
    assert with_interval(0.2, {"ci_low": 0.15, "ci_high": 0.4}) == "0.2 [0.15, 0.4]"
    small = {"ci_low": None, "ci_high": None, "n": 64, "n_clusters": 2, "reason": "2 independent units"}
    assert with_interval(0.25, small) == "0.25 (n=2)"  # the independent units (e.g. documents) are counted
    assert (
        with_interval(16.0, {"n": 64, "n_clusters": 22, "reason": "no spread between documents"}) == "16 ± 0"
    )  # TopK L0
    assert with_interval(0.25, {}) == "0.25" and with_interval(None, {"ci_low": 0, "ci_high": 1}) == "n/a"
