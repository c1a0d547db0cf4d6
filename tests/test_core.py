"""Core evaluator oracles on the embedded model, and the metric math on known inputs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import HOOK, SMALL, Constant, Identity, write_native

from saebench import evaluate
from saebench.evaluators.core import CoreConfig, core_metrics
from saebench.pipeline import ActivationPipeline
from saebench.pipeline.splice import SpliceStats


def test_identity_sae_is_perfect(model, cache_env):
    m = evaluate(Identity(), model=model, hook=HOOK, **SMALL).metrics["core"]
    assert m["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert m["mse"] == pytest.approx(0.0, abs=1e-12)
    assert m["delta_ce"] == pytest.approx(0.0, abs=1e-6)
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["ce_loss_score"] == pytest.approx(1.0, abs=1e-6)
    assert m["ce_loss_score_mean"] == pytest.approx(1.0, abs=1e-6)
    assert m["cossim"] == pytest.approx(1.0) and m["l2_ratio"] == pytest.approx(1.0)
    assert m["l0"] == 576 and m["dead_frac"] == 0.0
    assert m["n_tokens_reconstruction"] == 8 * 31 and m["n_tokens_loss"] == 8 * 30


def test_mean_sae_has_fvu_one_and_zero_mean_ablation_score(model, token_set, cache_env):
    pipe = ActivationPipeline(model, token_set, HOOK, batch_size=4, progress=False)
    mean = pipe.mean_act().float()
    m = evaluate(Constant(mean), model=model, hook=HOOK, **SMALL).metrics["core"]
    assert m["fvu"] == pytest.approx(1.0, abs=1e-5)
    assert m["ce_loss_score_mean"] == pytest.approx(0.0, abs=1e-6)
    assert m["l0"] == 0 and m["dead_frac"] == 1.0


def test_zero_sae_scores_zero_against_zero_ablation(model, cache_env):
    m = evaluate(Constant(torch.zeros(576)), model=model, hook=HOOK, **SMALL).metrics["core"]
    assert m["ce_loss_score_zero"] == pytest.approx(0.0, abs=1e-6)
    assert m["ce_spliced"] == pytest.approx(m["ce_zero_ablation"], abs=1e-9)
    assert m["ce_zero_ablation"] > m["ce_mean_ablation"] > m["ce_clean"]


def test_metrics_do_not_depend_on_batch_size(model, tmp_path, cache_env):
    folder, _ = write_native(tmp_path / "relu", arch="topk", d_sae=256)
    a = evaluate(str(folder), model=model, **{**SMALL, "batch_size": 2}).metrics["core"]
    b = evaluate(str(folder), model=model, **{**SMALL, "batch_size": 8}).metrics["core"]
    for key in ("mse", "fvu", "l0", "kl", "ce_spliced", "cossim"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_rerun_is_identical_and_uses_cache(model, tmp_path, cache_env):
    folder, _ = write_native(tmp_path / "topk", arch="topk", d_sae=256)
    first = evaluate(str(folder), model=model, **SMALL)
    second = evaluate(str(folder), model=model, **SMALL)
    m1, m2 = first.metrics["core"], second.metrics["core"]
    for key, val in m1.items():
        if isinstance(val, float):
            assert m2[key] == pytest.approx(val, abs=1e-6), key
    t2 = second.results["topk"]["core"].timing
    assert "prefix_cached_s" in t2 and "ablation_cached_s" in t2


def _stats(x: torch.Tensor, xhat: torch.Tensor, z: torch.Tensor) -> SpliceStats:
    n, d = x.shape
    x, xhat = x.double().view(1, n, d), xhat.double().view(1, n, d)
    ce = torch.full((1, 3), 2.0, dtype=torch.float64)
    return SpliceStats(
        sq_err=((x - xhat) ** 2).sum(-1),
        x_sq=(x * x).sum(-1),
        xhat_sq=(xhat * xhat).sum(-1),
        dot=(x * xhat).sum(-1),
        l0=(z != 0).sum(-1).double().view(1, n),
        l1=z.abs().sum(-1).double().view(1, n),
        sum_x=x.sum((0, 1)),
        sum_x2=(x * x).sum((0, 1)),
        fire_count=(z != 0).sum(0),
        ce_clean=ce,
        ce_spliced=ce + 0.5,
        kl=torch.full((1, 3), 0.1, dtype=torch.float64),
        ce_zero=ce + 5.0,
        ce_mean=ce + 2.5,
    )


def test_core_metric_math_on_known_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g) + 3.0
    xhat = 0.5 * x
    z = torch.zeros(50, 10)
    z[:, 0] = 1.0
    z[:5, 1] = 2.0
    m = core_metrics(_stats(x, xhat, z), CoreConfig())  # the flat dict: metrics and details
    xd = x.double()
    pooled = ((xd - xhat.double()) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    assert m["fvu"] == pytest.approx(float(pooled), rel=1e-12)
    assert m["mse"] == pytest.approx(float(((xd - 0.5 * xd) ** 2).mean()), rel=1e-12)
    assert m["l2_ratio"] == pytest.approx(0.5) and m["cossim"] == pytest.approx(1.0)
    assert m["relative_reconstruction_bias"] == pytest.approx(0.5)
    assert m["l0"] == pytest.approx(1.1) and m["l1"] == pytest.approx(1.2)
    assert m["dead_frac"] == pytest.approx(0.8) and m["dense_frac"] == pytest.approx(0.1)
    assert m["delta_ce"] == pytest.approx(0.5) and m["kl"] == pytest.approx(0.1)
    assert m["ce_loss_score_zero"] == pytest.approx(0.9) and m["ce_loss_score_mean"] == pytest.approx(0.8)
    assert sum(m["density_histogram"]["counts"]) == 2 and m["density_histogram"]["dead"] == 8


def test_undefined_ratios_are_none_not_nan():
    x = torch.ones(4, 3)  # zero variance: FVU undefined
    m = core_metrics(_stats(x, x, torch.ones(4, 2)), CoreConfig())
    assert m["fvu"] is None and m["explained_variance"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())
