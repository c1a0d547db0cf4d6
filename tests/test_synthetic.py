"""The synthetic source (saebench.synthetic): known dictionary, firing model, streams, bad settings."""

from __future__ import annotations

import pytest
import torch

from saebench.errors import SaebenchError
from saebench.synthetic import SyntheticConfig, SyntheticSource

SMALL = SyntheticConfig(d=16, n_features=96, mean_l0=3.0, n_parents=4, children_per_parent=3, n_groups=4)


def test_features_unit_norm_and_layout() -> None:
    s = SyntheticSource(SMALL)
    assert s.features.shape == (96, 16)
    assert torch.allclose(s.features.norm(dim=1), torch.ones(96), atol=1e-5)
    assert s.children_of(0) == [4, 5, 6] and s.children_of(3) == [13, 14, 15]
    assert int((s.group >= 0).sum()) == 16 and bool((s.group[: 4 + 12] < 0).all())  # groups among independents
    orth = SyntheticSource(SyntheticConfig(d=32, n_features=24, n_parents=2, n_groups=2, superposition=False))
    gram = orth.features @ orth.features.T
    assert torch.allclose(gram, torch.eye(24), atol=1e-5)


def test_stream_matches_the_firing_model() -> None:
    s = SyntheticSource(SMALL)
    fires = torch.zeros(96)
    n, l0 = 0, 0.0
    for bt in s.batches(40_000, 4096, "train"):
        on = bt.acts > 0
        # x is exactly the sum of the firing features' directions times their magnitudes
        assert torch.allclose(bt.x, bt.acts @ s.features, atol=1e-5)
        # a child fires only with its parent, and at most one child per parent
        for p in range(4):
            kids = on[:, s.children_of(p)]
            assert bool((kids.any(1) <= on[:, p]).all())
            assert int(kids.sum(1).max()) <= 1
        fires += on.sum(0)
        l0 += float(on.sum())
        n += on.shape[0]
    p = s.firing_prob().float()
    assert torch.allclose(fires / n, p, atol=0.012)  # Bernoulli noise at 40k tokens: sd <= 0.0025
    assert abs(l0 / n - SMALL.mean_l0) < 0.1
    # Zipf-like: the independent features' frequencies fall with rank
    free = p[16:]
    assert float(free[0]) > 5 * float(free[-1])
    # magnitudes: positive, mean near the feature's mean magnitude
    bt = next(s.batches(20_000, 20_000, "eval"))
    on = bt.acts[:, 0] > 0
    assert abs(float(bt.acts[on, 0].mean()) / float(s.magnitude_mean[0]) - 1) < 0.05


def test_streams_are_seeded_and_distinct() -> None:
    a = SyntheticSource(SMALL).activations(5000, "train", 1000)
    b = SyntheticSource(SMALL).activations(5000, "train", 1000)
    assert torch.equal(a, b)
    assert not torch.equal(a, SyntheticSource(SMALL).activations(5000, "eval", 1000))
    other = SyntheticSource(SyntheticConfig(**{**SMALL.to_dict(), "seed": 1}))
    assert not torch.equal(a, other.activations(5000, "train", 1000))
    assert SyntheticConfig.from_dict(SMALL.to_dict()).fingerprint() == SMALL.fingerprint()


def test_correlated_groups_fire_together() -> None:
    s = SyntheticSource(SyntheticConfig(d=16, n_features=96, mean_l0=3.0, n_parents=0, n_groups=4, group_prob=0.05))
    members = (s.group == 0).nonzero().squeeze(1)
    bt = next(s.batches(20_000, 20_000))
    on = (bt.acts[:, members] > 0).float()
    assert float(torch.corrcoef(on.T)[0, 1]) > 0.15
    loners = ((s.group < 0) & (s.parent < 0)).nonzero().squeeze(1)[:2]
    off = (bt.acts[:, loners] > 0).float()
    assert abs(float(torch.corrcoef(off.T)[0, 1])) < 0.05


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ({"n_parents": 10, "children_per_parent": 10}, "children_per_parent=10"),
        ({"child_prob": 1.5}, "child_prob=1.5"),
        ({"group_prob": 0.0}, "group_prob=0.0"),
        ({"d": 200}, "d=200"),
        ({"n_features": 20, "superposition": False}, "n_features=96"),
        ({"mean_l0": 500.0}, "mean_l0=500.0"),
        ({"n_groups": 40}, "n_groups=40"),
        ({"magnitude_low": 3.0, "magnitude_high": 2.0}, "magnitude_high=2.0"),
        ({"d": 0}, "d=0"),
    ],
)
def test_bad_settings_are_one_line_errors(setting: dict, needle: str) -> None:
    base = {"d": 16, "n_features": 96, "n_parents": 4, "children_per_parent": 3, "n_groups": 4}
    if setting.get("superposition") is False:
        base = {**base, "d": 20}
        setting = {"superposition": False}
    with pytest.raises(SaebenchError) as err:
        SyntheticSource(SyntheticConfig(**{**base, **setting}))
    msg = str(err.value)
    assert "\n" not in msg and needle in msg, msg


def test_huge_settings_are_refused_before_allocation() -> None:
    # 10^12 features would need terabytes: the check runs on scalars first
    with pytest.raises(SaebenchError, match="n_features=1000000000000 x d=64 makes a dictionary over 4 GB"):
        SyntheticSource(SyntheticConfig(n_features=10**12))
