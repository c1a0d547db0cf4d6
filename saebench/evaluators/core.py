"""Core metrics: sparsity, reconstruction and spliced language-model loss.

Reduces the float64 sums of :class:`saebench.pipeline.SpliceStats` into the metrics of
DESIGN.md ("Metrics: Core"). Tokens are the non-BOS positions of the token set; losses are the
predictions made at positions 1..T-2.

- ``l0``   mean number of non-zero latents per token; ``l1`` mean sum |z|.
- ``dead_frac``  fraction of latents that never fire on the sample; ``dense_frac`` fraction
  firing on more than ``dense_threshold`` (10%) of tokens; ``density_histogram`` of
  log10(firing frequency) over live latents.
- ``mse`` = Σ_t Σ_d (x - x̂)² / (N·d)  (per element; independent of batch size).
- ``fvu`` = Σ_t ‖x_t - x̂_t‖² / Σ_d Σ_t (x_td - mean_d)²  pooled over ALL tokens;
  ``explained_variance = 1 - fvu``.
- ``cossim`` mean over tokens of cos(x, x̂); ``l2_ratio`` = E‖x̂‖ / E‖x‖;
  ``relative_reconstruction_bias`` = E‖x̂‖² / E⟨x, x̂⟩ (Rajamanoharan et al. 2024, Gated SAEs).
- ``ce_clean``, ``ce_spliced``, ``delta_ce = ce_spliced - ce_clean``;
  ``kl`` = mean over tokens of KL(p_clean ‖ p_spliced) in nats;
  ``ce_loss_score_{zero,mean}`` = (ce_ablated - ce_spliced) / (ce_ablated - ce_clean) with the
  hook zero- or mean-ablated (positions ≥ 1). ``ce_loss_score`` is the zero-ablation one
  (SAEBench's convention).

Gao et al.'s compute-equivalent form of ΔLM-loss needs the subject model's scaling law; none is
known for SmolLM2, so it is not reported.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric, ratio
from saebench.pipeline.splice import SpliceStats


class CoreConfig(EvalConfig):
    dense_threshold: float = 0.1
    histogram_bins: int = 20
    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}


def core_metrics(st: SpliceStats, cfg: CoreConfig) -> dict[str, Any]:
    """The core metrics from one SAE's splice statistics (pure function; see module doc)."""
    n_tok = st.sq_err.numel()
    d = st.sum_x.numel()
    sq_err = float(st.sq_err.sum())
    var_total = float((st.sum_x2 - st.sum_x**2 / n_tok).sum())
    x_norm, xhat_norm = st.x_sq.sqrt(), st.xhat_sq.sqrt()
    denom = x_norm * xhat_norm
    cos = torch.where(denom > 0, st.dot / denom.clamp_min(1e-300), torch.zeros_like(denom))
    freq = st.fire_count.double() / n_tok
    live = freq[freq > 0]
    edges = torch.linspace(-math.log10(n_tok), 0.0, cfg.histogram_bins + 1)
    hist = torch.histogram(live.log10().float(), bins=edges)[0] if live.numel() else torch.zeros(cfg.histogram_bins)
    ce_clean, ce_spliced = float(st.ce_clean.mean()), float(st.ce_spliced.mean())
    ce_zero, ce_mean = float(st.ce_zero.mean()), float(st.ce_mean.mean())
    fvu = ratio(sq_err, var_total)
    score_zero = ratio(ce_zero - ce_spliced, ce_zero - ce_clean)
    return {
        "l0": float(st.l0.mean()),
        "l1": float(st.l1.mean()),
        "dead_frac": float((st.fire_count == 0).double().mean()),
        "dense_frac": float((freq > cfg.dense_threshold).double().mean()),
        "mse": sq_err / (n_tok * d),
        "fvu": fvu,
        "explained_variance": None if fvu is None else 1.0 - fvu,
        "cossim": float(cos.mean()),
        "l2_ratio": ratio(float(xhat_norm.mean()), float(x_norm.mean())),
        "relative_reconstruction_bias": ratio(float(st.xhat_sq.mean()), float(st.dot.mean())),
        "ce_clean": ce_clean,
        "ce_spliced": ce_spliced,
        "delta_ce": ce_spliced - ce_clean,
        "kl": float(st.kl.mean()),
        "ce_zero_ablation": ce_zero,
        "ce_mean_ablation": ce_mean,
        "ce_loss_score": score_zero,
        "ce_loss_score_zero": score_zero,
        "ce_loss_score_mean": ratio(ce_mean - ce_spliced, ce_mean - ce_clean),
        "n_tokens_reconstruction": n_tok,
        "n_tokens_loss": int(st.ce_clean.numel()),
        "d_sae_live": int((st.fire_count > 0).sum()),
        "density_histogram": {
            "log10_freq_edges": [round(float(e), 6) for e in edges],
            "counts": [int(c) for c in hist],
            "dead": int((st.fire_count == 0).sum()),
        },
    }


METRICS = (
    Metric("l0", "mean number of non-zero latents per token", "", True, "latents", "L0"),
    Metric("fvu", "fraction of variance unexplained, pooled over all tokens", "down", True, "", "FVU"),
    Metric("mse", "mean squared error per element", "down", True, "", "MSE"),
    Metric("cossim", "mean cosine similarity of x and its reconstruction", "up", True, "", "cos"),
    Metric("delta_ce", "next-token CE increase with the reconstruction spliced in", "down", True, "nats", "ΔCE"),
    Metric("kl", "mean KL(clean ‖ spliced) of the next-token distribution", "down", True, "nats", "KL"),
    Metric("ce_loss_score", "fraction of the zero-ablation CE increase the SAE recovers", "up", True, "", "CE score"),
    Metric("dead_frac", "fraction of latents that never fire on the sample", "down", True, "", "dead"),
    Metric("dense_frac", "fraction of latents firing on more than 10% of tokens", "down", True, "", "dense"),
    Metric("l1", "mean sum of |latent| per token"),
    Metric("explained_variance", "1 - fvu", "up"),
    Metric("l2_ratio", "E‖x̂‖ / E‖x‖"),
    Metric("relative_reconstruction_bias", "E‖x̂‖² / E⟨x, x̂⟩ (Gated SAE paper)"),
    Metric("ce_clean", "next-token CE of the clean model", "", False, "nats"),
    Metric("ce_spliced", "next-token CE with the reconstruction spliced in", "down", False, "nats"),
    Metric("ce_zero_ablation", "next-token CE with the hook zero-ablated", "", False, "nats"),
    Metric("ce_mean_ablation", "next-token CE with the hook mean-ablated", "", False, "nats"),
    Metric("ce_loss_score_zero", "CE score against zero-ablation", "up"),
    Metric("ce_loss_score_mean", "CE score against mean-ablation", "up"),
    Metric("n_tokens_reconstruction", "tokens in the reconstruction averages"),
    Metric("n_tokens_loss", "predictions in the loss averages"),
    Metric("d_sae_live", "latents that fire on the sample", "up"),
)


def split_output(flat: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """Numbers (and None) to metrics, everything else (lists, dicts, strings) to details."""
    metrics = {k: v for k, v in flat.items() if v is None or isinstance(v, (int, float))}
    return metrics, {k: v for k, v in flat.items() if k not in metrics}


class CoreEvaluator:
    """``--evals core``: sparsity, reconstruction and spliced-loss metrics."""

    name = "core"
    needs = frozenset({"splice"})
    Config = CoreConfig
    metrics = METRICS

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, CoreConfig) and ctx.splice is not None
        metrics, details = split_output(core_metrics(ctx.splice, cfg))
        return EvalOutput(metrics, details, timing=dict(ctx.splice.timing))
