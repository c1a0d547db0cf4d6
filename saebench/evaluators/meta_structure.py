"""``--evals meta_structure``: SAEBench's meta-SAE on the decoder (Bussmann et al. 2025, app. D.1).

A BatchTopK meta-SAE of width ``max(ceil(width_ratio · d_sae), k)`` with ``k`` active latents per
row on average is fitted to the SAE's decoder rows (:mod:`probes.meta_sae`: SAELens's
``BatchTopKTrainingSAE`` and ``SAETrainer`` as SAEBench 0.6.0 configures them, same seed → same
initialisation, batches and updates). Reported under SAEBench's names:

- ``decoder_fraction_variance_explained`` = ``1 - Σ_r ‖d_r - d̂_r‖² / Σ_r ‖d_r - d̄‖²`` over the
  ``d_sae`` decoder rows ``d_r`` (``d̄`` their mean, ``d̂_r`` the meta-SAE's reconstruction): how
  much shared structure the decoder directions have (higher: directions are sparse combinations
  of fewer shared ones);
- ``final_reconstruction_mse`` = ``Σ_r ‖d_r - d̂_r‖² / (d_sae · d_in)``.

SAEBench's third field, ``train_time_seconds``, is a wall-clock time: it is in the result's
``timing`` (``meta_sae_train_s``), not in its metrics, so reruns give identical metrics.

The input is the SAE's ``W_dec`` attribute as it is (SAEBench reads ``sae.W_dec``); an SAE with
no ``W_dec`` uses its decoder directions ``decode(e_i) - decode(0)`` (a note says so). No model
pass: the evaluator needs nothing from the pipeline (``needs`` is empty).

Intervals are over decoder rows (the meta-SAE held fixed): they say how far the value could move
for another draw of rows like these, not how it moves with the meta-SAE's training seed (that
spread is measured separately, ``docs/meta_structure.md``).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.probes.geometry import decoder_directions
from saebench.probes.meta_sae import meta_width, row_errors, train_meta_sae
from saebench.stats import Ratio, Samples

U = "decoder_row"


class MetaStructureConfig(EvalConfig):
    """SAEBench 0.6.0's ``MetaStructureEvalConfig`` defaults, its ``random_seed`` 42 included (the
    meta-SAE's seed, independent of the run's ``--seed``: set ``meta_structure.seed`` to vary it)."""

    seed: int = 42
    width_ratio: float = 0.25
    k: int = 4
    train_steps: int = 1500
    train_batch_size: int = 1024
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    autocast: bool = True
    eval_batch_size: int = 4096
    dead_feature_window: int = 2000
    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}


METRICS = (
    Metric("decoder_fraction_variance_explained",
           "fraction of the decoder rows' variance a BatchTopK meta-SAE (width d_sae/4, k=4) reconstructs (SAEBench)",
           "", True, "", "meta FVE", 0.01, Ratio(U, {"sq_err": 1.0}, {"var": 1.0}, -1.0, 1.0)),
    Metric("final_reconstruction_mse", "mean squared error of the meta-SAE per decoder element (SAEBench)", "",
           False, "", "", 0.0, Ratio(U, {"sq_err": 1.0}, {"n_elem": 1.0})),
    Metric("meta_width", "latents of the meta-SAE"),
)  # fmt: skip


def decoder_rows(sae: Any) -> tuple[torch.Tensor, str]:
    """``[d_sae, d_in]`` float32 rows the meta-SAE is fitted to and where they came from."""
    W = getattr(sae, "W_dec", None)
    d_sae, d_in = int(sae.d_sae), int(sae.d_in)
    if isinstance(W, torch.Tensor):
        if tuple(W.shape) != (d_sae, d_in):
            raise SaebenchError(f"SAE W_dec has shape {list(W.shape)}, expected [{d_sae}, {d_in}]; fix its W_dec")
        return W.detach().float().cpu(), "W_dec"
    rows, how = decoder_directions(sae)
    return rows, f"decode(e_i) - decode(0) ({how}): the SAE has no W_dec"


class MetaStructureEvaluator:
    """``--evals meta_structure``: a meta-SAE on the decoder rows (see module doc)."""

    name = "meta_structure"
    needs: frozenset[str] = frozenset()
    Config = MetaStructureConfig
    metrics = METRICS

    def preflight(self, cfg: EvalConfig) -> None:
        """Refuse settings no meta-SAE can be trained with, before the model loads."""
        assert isinstance(cfg, MetaStructureConfig)
        small = [n for n in ("k", "train_steps", "train_batch_size", "eval_batch_size", "dead_feature_window")
                 if getattr(cfg, n) < 1]  # fmt: skip
        if small or cfg.width_ratio <= 0 or cfg.learning_rate <= 0 or cfg.weight_decay < 0:
            bad = ", ".join(small + [n for n in ("width_ratio", "learning_rate") if getattr(cfg, n) <= 0])
            raise SaebenchError(
                f"meta_structure: {bad or 'weight_decay'} out of range (counts >= 1, width_ratio and learning_rate "
                "> 0, weight_decay >= 0); fix --set meta_structure.KEY=VALUE"
            )

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, MetaStructureConfig)
        self.preflight(cfg)
        rows, source = decoder_rows(ctx.sae)
        if not bool(torch.isfinite(rows).all()):
            raise SaebenchError(f"SAE {ctx.sae_name} has non-finite decoder rows; fix its weights")
        d_sae, d_in = rows.shape
        width = meta_width(d_sae, cfg.width_ratio, cfg.k)
        seed = cfg.seed
        t0 = time.perf_counter()
        meta = train_meta_sae(rows, width, cfg.k, cfg.train_steps, cfg.train_batch_size, cfg.learning_rate, seed,
                              cfg.autocast, cfg.weight_decay, cfg.dead_feature_window)  # fmt: skip
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        err, var = row_errors(meta, rows, cfg.eval_batch_size)
        t_eval = time.perf_counter() - t0
        if float(var.sum()) == 0.0:
            ctx.notes.append("meta_structure: all decoder rows are equal (no variance): FVE undefined")
        samples = Samples(U, [ctx.latent_id(i) for i in range(d_sae)],
                          {"sq_err": err.tolist(), "var": var.tolist(), "n_elem": [float(d_in)] * d_sae})  # fmt: skip
        details = {
            "meta_width": width,
            "decoder_source": source,
            "seed": seed,
            "train_rows_seen": cfg.train_steps * cfg.train_batch_size,
            "saebench_eval_type_id": "meta_structure_decoder_variance",
        }
        return EvalOutput(
            {"meta_width": width},
            details,
            samples={U: samples},
            timing={"meta_sae_train_s": t_train, "meta_sae_eval_s": t_eval},
        )
