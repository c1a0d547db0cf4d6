"""Core metrics: sparsity, reconstruction and spliced language-model loss.

Every number is a pooled statistic over the *kept* positions of the token set (positions not
holding the BOS id: see :mod:`saebench.pipeline.splice`), accumulated per context in float64, so
nothing depends on the batch size and every metric gets an interval over contexts, resampled by
source document (contexts of one document are not independent; :mod:`saebench.stats`). The
latent-density metrics (``dead_frac``, ``frac_alive``, ``dense_frac``, ``freq_over_*``) get a
document-jackknife interval that covers their expected value on a fresh token sample of the same
size (:func:`density_intervals_from_counts`).

Published names carry the publisher's number (equal on the same tokens and SAE; tested against
SAEBench 0.6.0's own core eval, ``exclude_special_tokens_from_reconstruction=True``,
``ignore_tokens={BOS}``, and SAELens 6.54):

- ``l0`` mean number of non-zero latents per token; ``l1`` mean Σ_i z_i (signed, as SAEBench;
  equal to Σ|z| for non-negative latents);
- ``ce_loss_without_sae`` / ``ce_loss_with_sae`` / ``ce_loss_with_ablation``: next-token CE of
  the clean model / with x̂ spliced in / with the hook zero-ablated at every position (BOS
  included); ``ce_loss_score = (ce_abl - ce_sae) / (ce_abl - ce_clean)`` (SAEBench, SAELens);
- ``kl_div_with_sae`` = mean KL(p_clean ‖ p_sae) (nats), ``kl_div_with_ablation`` the same for
  the zero ablation, ``kl_div_score = (kl_abl - kl_sae) / kl_abl`` (SAEBench); ``kl`` is
  ``kl_div_with_sae`` under our short name;
- ``explained_variance = 1 - fvu`` with the pooled ``fvu`` below (SAELens 6.54's number).
  SAEBench 0.6.0's ``explained_variance`` subtracts (E‖x‖²/d)² instead of ‖E x‖² (SAELens #659,
  fixed there, not in SAEBench 0.6.0): a different, uncentred quantity we do not report;
- ``cossim`` mean cos(x, x̂); ``l2_norm_in`` E‖x‖, ``l2_norm_out`` E‖x̂‖, ``l2_ratio`` E[‖x̂‖/‖x‖]
  (per-token ratio, an input norm below 1e-4 read as 1, as SAEBench);
- ``relative_reconstruction_bias`` = E‖x̂‖² / E⟨x, x̂⟩ (Rajamanoharan et al. 2024, eq. 10), pooled.
  SAEBench 0.6.0 averages per-batch ratios, which moves with the batch size (2e-4 relative at
  batch 4): not comparable to the 4th digit, named here as a known difference;
- ``frac_alive`` fraction of latents with z ≠ 0 somewhere in the sample (SAEBench counts z > 0:
  the same for non-negative latents, i.e. every architecture here); ``freq_over_1_percent``
  / ``freq_over_10_percent`` fractions of latents firing on more than 1% / 10% of tokens and
  ``normalized_freq_over_*`` the share of all firing they account for (SAEBench's misc metrics).

Our own (names SAEBench and SAELens do not use):

- ``mse`` = Σ_t Σ_d (x - x̂)² / (N·d), per element. (SAELens reports the per-token sum, d × ours;
  SAEBench 0.6.0 divides the per-token sum by the batch's token count, so it moves with the batch
  size.) ``fvu`` = Σ_t ‖x_t - x̂_t‖² / Σ_t ‖x_t - μ‖² pooled over all kept tokens (μ their mean);
- ``delta_ce`` = ce_loss_with_sae - ce_loss_without_sae;
- ``ce_loss_score_bos_clean`` / ``ce_loss_score_mean``: the CE score against zero- / mean-ablation
  of the kept positions only (special positions clean), with their ablated CEs; computed only with
  ``--set core.ablation_variants=true`` (two more suffix passes on a cold run), absent otherwise;
- ``dead_frac`` = 1 - frac_alive, ``dense_frac`` = freq_over_10_percent (the names DESIGN.md uses).

Transcoders (:mod:`saebench.transcoder`): x is the *output* hook's activation (the target the
transcoder predicts from its input), x̂ its prediction (with the skip term), and the splice, CE, KL
and the ablation baselines replace the output hook; ``l0``, ``l1`` and the densities count the
latents computed from the input. ``mse`` divides by ``d_out``. docs/transcoders.md.

Gao et al.'s compute-equivalent form of ΔLM-loss needs the subject model's scaling law; none is
known for SmolLM2, so it is not reported.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import numpy as np
import torch

from saebench import stats
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.pipeline.splice import SpliceStats
from saebench.sae import output_width
from saebench.stats import Ratio, Samples

U = "sequence"


def _r(num: dict[str, float], den: dict[str, float] | None, scale: float = 1.0, offset: float = 0.0) -> Ratio:
    return Ratio(U, num, den, scale, offset)


def _mean(col: str, n: str) -> Ratio:
    return _r({col: 1.0}, {n: 1.0})


FVU = _r({"sq_err": 1.0}, {"var": 1.0})


def _score(ablated: str) -> Ratio:
    return _r({ablated: 1.0, "ce_spliced": -1.0}, {ablated: 1.0, "ce_clean": -1.0})


class CoreConfig(EvalConfig):
    dense_threshold: float = 0.1
    histogram_bins: int = 20
    #: also compute our own ablation variants (zeroing / mean-ablating only the kept positions) and
    #: the four metrics they feed (``ce_loss_score_bos_clean``, ``ce_loss_score_mean``,
    #: ``ce_loss_with_ablation_bos_clean``, ``ce_loss_with_mean_ablation``): two more suffix passes
    #: on a cold run. Off by default: the headline and SAEBench-named metrics need only ``zero_all``.
    ablation_variants: bool = False
    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    def splice_ablations(self) -> tuple[str, ...]:
        """The ablation baselines the shared splice loop must compute for this configuration."""
        return ("zero_all", "zero_kept", "mean_kept") if self.ablation_variants else ("zero_all",)


def M(  # noqa: N802 - a short table constructor
    name: str,
    meaning: str,
    direction: str = "",
    headline: bool = False,
    unit: str = "",
    title: str = "",
    min_effect: float = 0.0,
    est: Ratio | None = None,
    min_rel_effect: float = 0.0,
    optional: bool = False,
) -> Metric:
    """A short constructor for the table below."""
    return Metric(name, meaning, direction, headline, unit, title, min_effect, est, min_rel_effect, optional)  # type: ignore[arg-type]


# fmt: off
METRICS = (
    # name, meaning, better direction, headline, unit, board title, minimum effect, estimator
    M("l0", "mean number of non-zero latents per token", "", True, "latents", "L0", 0.0, _mean("l0", "n_rec")),
    M("fvu", "fraction of variance unexplained, pooled over all kept tokens", "down", True, "", "FVU", 0.002, FVU),
    M("delta_ce", "CE increase with x̂ spliced in", "down", True, "nats", "ΔCE", 0.005,
      _r({"ce_spliced": 1.0, "ce_clean": -1.0}, {"n_ce": 1.0})),
    M("ce_loss_score", "fraction of the zero-ablation CE increase recovered (SAEBench, SAELens)", "up", True, "",
      "CE score", 0.001, _score("ce_zero_all")),
    M("kl_div_score", "fraction of the zero-ablation KL recovered (SAEBench)", "up", True, "", "KL score", 0.001,
      _r({"kl_zero_all": 1.0, "kl_spliced": -1.0}, {"kl_zero_all": 1.0})),
    M("mse", "mean squared error per element", "down", True, "", "MSE", 0.0, _r({"sq_err": 1.0}, {"n_elem": 1.0}),
      min_rel_effect=0.01),
    M("cossim", "mean cosine similarity of x and x̂ (SAEBench)", "up", True, "", "cos", 0.001, _mean("cos", "n_rec")),
    M("kl", "mean KL(clean ‖ spliced), = kl_div_with_sae", "down", True, "nats", "KL", 0.005,
      _mean("kl_spliced", "n_kl")),
    M("dead_frac", "fraction of latents never non-zero on the sample (= 1 - frac_alive)", "down", True, "", "dead",
      0.002),
    M("dense_frac", "fraction of latents non-zero on more than 10% of tokens (= freq_over_10_percent)", "down", True,
      "", "dense", 0.002),
    M("explained_variance", "1 - fvu (SAELens 6.54)", "up", False, "", "", 0.002,
      _r({"sq_err": 1.0}, {"var": 1.0}, -1.0, 1.0)),
    M("l1", "mean Σ_i z_i per token (SAEBench: signed)", "", False, "", "", 0.0, _mean("l1", "n_rec")),
    M("l2_norm_in", "mean ‖x‖ (SAEBench)", "", False, "", "", 0.0, _mean("l2_in", "n_rec")),
    M("l2_norm_out", "mean ‖x̂‖ (SAEBench)", "", False, "", "", 0.0, _mean("l2_out", "n_rec")),
    M("l2_ratio", "mean ‖x̂‖/‖x‖ per token (SAEBench)", "", False, "", "", 0.0, _mean("l2_ratio", "n_rec")),
    M("relative_reconstruction_bias", "E‖x̂‖² / E⟨x, x̂⟩ (Gated SAE paper, pooled)", "", False, "", "", 0.0,
      _r({"xhat_sq": 1.0}, {"dot": 1.0})),
    M("ce_loss_without_sae", "next-token CE of the clean model (SAEBench)", "", False, "nats", "", 0.0,
      _mean("ce_clean", "n_ce")),
    M("ce_loss_with_sae", "next-token CE with x̂ spliced in (SAEBench)", "down", False, "nats", "", 0.005,
      _mean("ce_spliced", "n_ce")),
    M("ce_loss_with_ablation", "next-token CE with the hook zeroed at every position (SAEBench)", "", False, "nats",
      "", 0.0, _mean("ce_zero_all", "n_ce")),
    M("kl_div_with_sae", "mean KL(clean ‖ spliced) (SAEBench)", "down", False, "nats", "", 0.005,
      _mean("kl_spliced", "n_kl")),
    M("kl_div_with_ablation", "mean KL(clean ‖ zero-ablated) (SAEBench)", "", False, "nats", "", 0.0,
      _mean("kl_zero_all", "n_kl")),
    # our ablation variants: only with --set core.ablation_variants=true (optional: absent otherwise)
    M("ce_loss_score_bos_clean", "CE score against zero-ablation of the kept positions only", "up", False, "", "",
      0.001, _score("ce_zero_kept"), optional=True),
    M("ce_loss_score_mean", "CE score against mean-ablation of the kept positions", "up", False, "", "", 0.001,
      _score("ce_mean_kept"), optional=True),
    M("ce_loss_with_ablation_bos_clean", "CE with the kept positions zeroed", "", False, "nats", "", 0.0,
      _mean("ce_zero_kept", "n_ce"), optional=True),
    M("ce_loss_with_mean_ablation", "CE with the kept positions mean-ablated", "", False, "nats", "", 0.0,
      _mean("ce_mean_kept", "n_ce"), optional=True),
    M("frac_alive", "fraction of latents non-zero somewhere in the sample (SAEBench)", "up", False, "", "", 0.002),
    M("freq_over_1_percent", "fraction of latents non-zero on more than 1% of tokens (SAEBench)"),
    M("freq_over_10_percent", "fraction of latents non-zero on more than 10% of tokens (SAEBench)", "down", False, "",
      "", 0.002),
    M("normalized_freq_over_1_percent", "share of all firing by latents above 1% density (SAEBench)"),
    M("normalized_freq_over_10_percent", "share of all firing by latents above 10% density (SAEBench)"),
    M("n_tokens_reconstruction", "kept tokens in the reconstruction averages"),
    M("n_tokens_loss", "kept predictions in the CE averages"),
    M("d_sae_live", "latents non-zero somewhere in the sample"),
)
# fmt: on
METRIC_BY_NAME = {m.name: m for m in METRICS}


def core_samples(st: SpliceStats, d_in: int) -> Samples:
    """The per-context columns every core estimator reads (``var`` and ``n_elem`` derived), with
    each context's source document as its cluster (intervals resample whole documents)."""
    cols = {k: v.tolist() for k, v in st.cols.items()}
    cols["var"] = st.var().tolist()
    cols["n_elem"] = (st.cols["n_rec"] * d_in).tolist()
    docs = list(st.doc_ids) if st.doc_ids is not None and len(st.doc_ids) == len(st.seq_ids) else None
    return Samples(U, list(st.seq_ids), cols, clusters=docs, cluster_unit="document" if docs else "")


def density_metrics(fire: np.ndarray, n_tok: float, dense: float) -> dict[str, float]:
    """The latent-density metrics from per-latent firing counts over ``n_tok`` kept tokens."""
    freq = np.asarray(fire, dtype=np.float64) / max(n_tok, 1.0)
    total = float(freq.sum())
    return {
        "frac_alive": float((freq > 0).mean()),
        "dead_frac": float((freq == 0).mean()),
        "dense_frac": float((freq > dense).mean()),
        "freq_over_1_percent": float((freq > 0.01).mean()),
        "freq_over_10_percent": float((freq > 0.1).mean()),
        "normalized_freq_over_1_percent": float(freq[freq > 0.01].sum()) / total if total > 0 else 0.0,
        "normalized_freq_over_10_percent": float(freq[freq > 0.1].sum()) / total if total > 0 else 0.0,
    }


#: what the density intervals cover (a fresh sample's value, not the value at infinitely many tokens)
DENSITY_TARGET = "expected value on a fresh token sample of the same size from the same corpus"


def density_intervals_from_counts(
    fire_by_seq: np.ndarray, n_rec: np.ndarray, clusters: list[str] | None, dense: float
) -> dict[str, stats.Interval]:
    """Document-jackknife intervals of the density metrics from per-context firing counts
    ``[n_seq, d_sae]`` and kept tokens per context (``clusters``: each context's document).

    A bootstrap cannot do this: a resample holds ~63% of the distinct contexts, so a latent
    seen once is often unseen in it and every resampled dead fraction is >= the estimate (an
    interval above its own estimate). The leave-one-document-out values give a conservative
    jackknife standard error (:func:`saebench.stats.jackknife_interval`); the interval covers
    :data:`DENSITY_TARGET` (the dead fraction at infinitely many tokens is lower, and no interval
    from one sample can bound it)."""
    n = int(fire_by_seq.shape[0])
    labels = clusters if clusters is not None and len(clusters) == n else [str(i) for i in range(n)]
    unit = "document" if clusters is not None and len(clusters) == n else U
    index: dict[str, int] = {}
    g = np.array([index.setdefault(c, len(index)) for c in labels], dtype=np.int64)
    by_doc = np.zeros((len(index), fire_by_seq.shape[1]), dtype=np.float64)
    np.add.at(by_doc, g, np.asarray(fire_by_seq, dtype=np.float64))
    tok_doc = np.bincount(g, weights=np.asarray(n_rec, dtype=np.float64), minlength=len(index))
    total, n_tok = by_doc.sum(0), float(tok_doc.sum())
    point = density_metrics(total, n_tok, dense)
    loo = [density_metrics(total - by_doc[k], n_tok - tok_doc[k], dense) for k in range(len(index))]
    return {
        name: stats.jackknife_interval(value, np.array([x[name] for x in loo]), n, U, unit, DENSITY_TARGET)
        for name, value in point.items()
    }


def density_intervals(st: SpliceStats, dense: float) -> dict[str, stats.Interval]:
    """Intervals of the density metrics (see :func:`density_intervals_from_counts`), when the
    per-context firing counts were kept."""
    if st.fire_by_seq is None or len(st.seq_ids) < 2:
        return {}
    return density_intervals_from_counts(st.fire_by_seq.numpy(), st.cols["n_rec"].numpy(), st.doc_ids, dense)


def core_metrics(st: SpliceStats, cfg: CoreConfig, d_in: int) -> dict[str, Any]:
    """Every core metric from one SAE's splice statistics (values of the declared estimators, the
    density metrics, and the histogram under ``density_histogram``)."""
    samples = {U: core_samples(st, d_in)}
    out: dict[str, Any] = {
        m.name: stats.estimate(m.estimator, samples)
        for m in METRICS
        if m.estimator and (not m.optional or stats.has_columns(m.estimator, samples))  # variants when asked
    }
    n_tok = float(st.cols["n_rec"].sum())
    out.update(density_metrics(st.fire_count.numpy(), n_tok, cfg.dense_threshold))
    out["n_tokens_reconstruction"] = int(n_tok)
    out["n_tokens_loss"] = int(st.cols["n_ce"].sum())
    out["d_sae_live"] = int((st.fire_count > 0).sum())
    freq = st.fire_count.double() / max(n_tok, 1.0)
    live = freq[freq > 0]
    edges = torch.linspace(-math.log10(max(n_tok, 10.0)), 0.0, cfg.histogram_bins + 1)
    hist = torch.histogram(live.log10().float(), bins=edges)[0] if live.numel() else torch.zeros(cfg.histogram_bins)
    out["density_histogram"] = {
        "log10_freq_edges": [round(float(e), 6) for e in edges],
        "counts": [int(c) for c in hist],
        "dead": int((st.fire_count == 0).sum()),
    }
    return out


class CoreEvaluator:
    """``--evals core``: sparsity, reconstruction and spliced-loss metrics (see module doc)."""

    name = "core"
    needs = frozenset({"splice"})
    Config = CoreConfig
    metrics = METRICS

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, CoreConfig) and ctx.splice is not None
        d_out = output_width(ctx.sae)  # the reconstructed activation's width (d_in for an SAE)
        flat = core_metrics(ctx.splice, cfg, d_out)
        hist = flat.pop("density_histogram")
        details = {
            "density_histogram": hist,
            "special_positions": "tokens equal to the BOS id (kept clean, not averaged)",
            "dense_threshold": cfg.dense_threshold,
        }
        t0 = time.perf_counter()
        density = density_intervals(ctx.splice, cfg.dense_threshold)
        timing = {**ctx.splice.timing, "density_intervals_s": time.perf_counter() - t0}
        return EvalOutput(
            flat,
            details,
            samples={U: core_samples(ctx.splice, d_out)},
            uncertainty=density,
            timing=timing,
        )
