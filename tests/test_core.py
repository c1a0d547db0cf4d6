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

VARIANTS = {"core": {"ablation_variants": True}}
VARIANT_METRICS = (
    "ce_loss_score_bos_clean",
    "ce_loss_score_mean",
    "ce_loss_with_ablation_bos_clean",
    "ce_loss_with_mean_ablation",
)


def test_identity_sae_is_perfect(model, token_set, cache_env):
    m = evaluate(Identity(), model=model, hook=HOOK, **SMALL).metrics["core"]
    assert m["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert m["mse"] == pytest.approx(0.0, abs=1e-12)
    assert m["delta_ce"] == pytest.approx(0.0, abs=1e-6)
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["ce_loss_score"] == pytest.approx(1.0, abs=1e-6)
    assert m["cossim"] == pytest.approx(1.0) and m["l2_ratio"] == pytest.approx(1.0)
    assert m["l0"] == 576 and m["dead_frac"] == 0.0
    assert m["kl_div_score"] == pytest.approx(1.0, abs=1e-6) and m["explained_variance"] == pytest.approx(1.0)
    # special (BOS-id) positions are left out: position 0 of every context and any document separator
    kept = token_set.tokens != model.bos_id
    assert m["n_tokens_reconstruction"] == int(kept.sum()) and m["n_tokens_loss"] == int(kept[:, :-1].sum())


def test_mean_sae_has_fvu_one_and_zero_mean_ablation_score(model, token_set, cache_env):
    pipe = ActivationPipeline(model, token_set, HOOK, batch_size=4, progress=False)
    mean = pipe.mean_act().float()
    m = evaluate(Constant(mean), model=model, hook=HOOK, eval_config=VARIANTS, **SMALL).metrics["core"]
    assert m["fvu"] == pytest.approx(1.0, abs=1e-5)
    assert m["ce_loss_score_mean"] == pytest.approx(0.0, abs=1e-6)
    assert m["l0"] == 0 and m["dead_frac"] == 1.0


def test_zero_sae_scores_zero_against_zero_ablation(model, cache_env):
    m = evaluate(Constant(torch.zeros(576)), model=model, hook=HOOK, eval_config=VARIANTS, **SMALL).metrics["core"]
    assert m["ce_loss_score_bos_clean"] == pytest.approx(0.0, abs=1e-6)
    assert m["ce_loss_with_sae"] == pytest.approx(m["ce_loss_with_ablation_bos_clean"], abs=1e-9)
    assert m["ce_loss_with_ablation_bos_clean"] > m["ce_loss_with_mean_ablation"] > m["ce_loss_without_sae"]
    # SAEBench's zero ablation zeroes every position, BOS too: the residual stream of this model
    # (no biases, RMSNorm(0) = 0) stays 0 and the prediction is uniform: CE = ln V exactly
    assert m["ce_loss_with_ablation"] == pytest.approx(math.log(49152), abs=1e-5)


def test_default_core_computes_only_the_zero_ablation(model, cache_env):
    """The lean default: one ablation baseline (zero_all, what SAEBench's scores need); our
    variants are absent from the result, not null; asking for them later adds only their passes."""
    run = evaluate(Constant(torch.zeros(576)), model=model, hook=HOOK, **SMALL)
    m = run.metrics["core"]
    assert not set(VARIANT_METRICS) & set(m)
    n_batches = SMALL["tokens"] // SMALL["ctx_len"] // SMALL["batch_size"]
    # zero_all at a residual hook costs no suffix batch: one context of zeros stands for all
    assert run.counters[HOOK].ablation_batches == 0
    again = evaluate(Constant(torch.zeros(576)), model=model, hook=HOOK, eval_config=VARIANTS, **SMALL)
    assert again.counters[HOOK].ablation_batches == 2 * n_batches  # zero_kept, mean_kept; zero_all cached
    assert set(VARIANT_METRICS) <= set(again.metrics["core"])
    assert again.metrics["core"]["ce_loss_score"] == m["ce_loss_score"]


def test_metrics_do_not_depend_on_batch_size(model, tmp_path, cache_env):
    folder, _ = write_native(tmp_path / "relu", arch="topk", d_sae=256)
    a = evaluate(str(folder), model=model, **{**SMALL, "batch_size": 2}).metrics["core"]
    b = evaluate(str(folder), model=model, **{**SMALL, "batch_size": 8}).metrics["core"]
    for key in ("mse", "fvu", "l0", "kl", "ce_loss_with_sae", "cossim", "relative_reconstruction_bias", "kl_div_score"):
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
    """One context of n kept tokens, built from the definitions (CE and KL columns set by hand)."""
    n, d = x.shape
    x, xhat = x.double(), xhat.double()
    xn, hn = x.norm(dim=-1), xhat.norm(dim=-1)
    dot = (x * xhat).sum(-1)
    one = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
    cols = {
        "n_rec": one(n),
        "sq_err": one(((x - xhat) ** 2).sum()),
        "x_sq": one((x * x).sum()),
        "cos": one((dot / (xn * hn)).sum()),
        "l2_in": one(xn.sum()),
        "l2_out": one(hn.sum()),
        "l2_ratio": one((hn / xn).sum()),
        "xhat_sq": one((hn**2).sum()),
        "dot": one(dot.sum()),
        "l0": one((z != 0).sum()),
        "l1": one(z.sum()),
        "n_ce": one(3),
        "ce_clean": one(3 * 2.0),
        "ce_spliced": one(3 * 2.5),
        "n_kl": one(3),
        "kl_spliced": one(3 * 0.1),
        "kl_zero_all": one(3 * 1.0),
        "ce_zero_all": one(3 * 7.0),
        "ce_zero_kept": one(3 * 7.0),
        "ce_mean_kept": one(3 * 4.5),
    }
    return SpliceStats(cols, x.sum(0, keepdim=True), (z > 0).sum(0), (z > 0).sum(0, keepdim=True).int(), ["c0"])


def test_core_metric_math_on_known_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g) + 3.0
    xhat = 0.5 * x
    z = torch.zeros(50, 10)
    z[:, 0] = 1.0
    z[:5, 1] = 2.0
    m = core_metrics(_stats(x, xhat, z), CoreConfig(), d_in=6)  # the flat dict: metrics and the histogram
    xd = x.double()
    pooled = ((xd - xhat.double()) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    assert m["fvu"] == pytest.approx(float(pooled), rel=1e-12)
    assert m["explained_variance"] == pytest.approx(1 - float(pooled), rel=1e-12)
    assert m["mse"] == pytest.approx(float(((xd - 0.5 * xd) ** 2).mean()), rel=1e-12)
    assert m["l2_ratio"] == pytest.approx(0.5) and m["cossim"] == pytest.approx(1.0)
    assert m["relative_reconstruction_bias"] == pytest.approx(0.5)
    assert m["l0"] == pytest.approx(1.1) and m["l1"] == pytest.approx(1.2)
    assert m["dead_frac"] == pytest.approx(0.8) and m["dense_frac"] == pytest.approx(0.1)
    assert m["frac_alive"] == pytest.approx(0.2) and m["freq_over_10_percent"] == pytest.approx(0.1)
    assert m["normalized_freq_over_10_percent"] == pytest.approx(1.0 / 1.1)  # latent 1 fires on exactly 10%
    assert m["freq_over_1_percent"] == pytest.approx(0.2) and m["normalized_freq_over_1_percent"] == pytest.approx(1.0)
    assert m["delta_ce"] == pytest.approx(0.5) and m["kl"] == pytest.approx(0.1)
    assert m["ce_loss_score"] == pytest.approx(0.9) and m["ce_loss_score_mean"] == pytest.approx(0.8)
    assert m["kl_div_score"] == pytest.approx(0.9)
    assert sum(m["density_histogram"]["counts"]) == 2 and m["density_histogram"]["dead"] == 8


def test_undefined_ratios_are_none_not_nan():
    x = torch.ones(4, 3)  # zero variance: FVU undefined
    m = core_metrics(_stats(x, x, torch.ones(4, 2)), CoreConfig(), d_in=3)
    assert m["fvu"] is None and m["explained_variance"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())
