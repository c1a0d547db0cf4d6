"""``--evals ablation``: downstream ablation sparsity (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", sec. 4.5).

Does removing one latent change few or many of the model's predictions? For a seeded sample of
live latents and, per latent, a seeded uniform sample of positions where it fires:

1. splice the SAE's reconstruction into the hook (positions ≥ 1; BOS kept clean as in core);
2. ablate the latent at position p: subtract its decoder contribution
   ``decode(z) - decode(z with z_i = 0)`` at p only;
3. run the model from the hook's block; Δ_{t,v} = logit_ablated − logit_spliced at the T
   positions p .. p+T−1 (the ablated position and the next T−1) for all V vocabulary entries;
4. subtract each position's median over the V entries (a uniform logit shift changes no
   probability), concatenate the T rows into one vector of V·T entries, and score

       s = (‖Δ‖₁ / ‖Δ‖₂)² / (V·T)        ∈ (0, 1]    (Gao et al. 2024, sec. 4.5)

   s = 1/(V·T) when a single logit moves, 1 when all move equally; lower is sparser.

Reported: mean (``ablation_sparsity``), median, quantiles, per-latent means, over the sampled
(latent, position) pairs. Choices: T = ``window`` positions counted from the ablated one (so
V·T is exactly the number of concatenated entries and s ≤ 1 by Cauchy-Schwarz); positions are
sampled only where the whole window fits in the context (p ≤ ctx_len − T; never truncated, so
every pair has the same normalisation); the median is torch's lower median for even V. A pair
whose ablation leaves the reconstruction bit-identical (a zero decoder row) or moves the logits
only uniformly has no effect: it is counted in ``n_no_effect`` and left out of the score, never
NaN.

Cost: ``ActivationPipeline.ablation_effects`` computes each context's un-ablated spliced logits
once and runs the ablations of many (latent, position) pairs, from different latents and
contexts, as rows of one suffix pass, each row cut at p + T.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch

from saebench.errors import SaebenchError
from saebench.evaluators import EvalConfig, EvalContext


class AblationConfig(EvalConfig):
    """Settings of ``--evals ablation``; profiles set the sample sizes only."""

    n_latents: int = 16                 # live latents sampled (seeded)
    latents: list[int] | None = None    # explicit latent indices instead of a sample
    positions_per_latent: int = 4       # active positions sampled per latent (uniform, seeded)
    window: int = 16                    # T: positions scored, the ablated one included
    row_batch: int | None = None        # rows per suffix call (default: 4 x --batch-size)

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"n_latents": 16, "positions_per_latent": 4},
        "standard": {"n_latents": 64, "positions_per_latent": 8},
        "paper": {"n_latents": 256, "positions_per_latent": 16},
    }


def ablation_sparsity(delta: torch.Tensor) -> torch.Tensor:
    """Gao et al.'s downstream-effect sparsity of logit differences ``delta [..., T, V]`` → ``[...]``.

    Δ ← Δ − median_v(Δ) per position; s = (‖Δ‖₁/‖Δ‖₂)² / (V·T) over the concatenated T·V
    entries (float64), clamped to ≤ 1 against rounding; NaN where Δ vanishes (no effect).
    """
    d = delta.double()
    d = d - d.median(dim=-1, keepdim=True).values
    flat = d.flatten(-2)
    l1, l2 = flat.abs().sum(-1), flat.norm(dim=-1)
    score = ((l1 / l2.clamp_min(1e-300)) ** 2 / flat.shape[-1]).clamp_max(1.0)
    return torch.where(l2 > 0, score, torch.full_like(score, float("nan")))


class AblationEvaluator:
    """``--evals ablation``: see module doc."""

    name = "ablation"
    needs = frozenset({"states"})
    Config = AblationConfig

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> dict[str, Any]:
        assert isinstance(cfg, AblationConfig)
        pipe, sae = ctx.pipeline, ctx.sae
        seed = int(ctx.run_config.get("seed", 0))
        ctx_len = pipe.tokens.ctx_len
        window = cfg.window
        if window < 1 or cfg.positions_per_latent < 1:
            raise SaebenchError("ablation: window and positions_per_latent must be >= 1; fix the --set values")
        if ctx_len - window < 1:
            window = ctx_len - 1
            ctx.notes.append(f"ablation: window shortened from {cfg.window} to {window} to fit {ctx_len}-token contexts")
        t0 = time.perf_counter()
        pipe.states()  # the shared prefix pass (cached on disk; free when another evaluator ran it)
        t_states = time.perf_counter() - t0
        t0 = time.perf_counter()
        latents, _ = pipe.choose_latents(sae, cfg.latents, cfg.n_latents, seed, "ablation")
        ex = pipe.latent_examples(sae, latents, n_random=cfg.positions_per_latent, seed=seed,
                                  positions=(1, ctx_len - window))
        rs = ex.random
        pairs = torch.stack([rs.seq[rs.valid], rs.pos[rs.valid], latents[:, None].expand_as(rs.seq)[rs.valid]], 1)
        t_sample = time.perf_counter() - t0
        calls0 = pipe.ablation_forward_batches
        t0 = time.perf_counter()
        values, no_effect = pipe.ablation_effects(sae, pairs, window, ablation_sparsity, cfg.row_batch)
        t_run = time.perf_counter() - t0
        no_effect = no_effect | values.isnan()
        ok = values[~no_effect]
        per_latent = []
        for li, lat in enumerate(latents.tolist()):
            mine = pairs[:, 2] == lat
            vals = values[mine & ~no_effect]
            per_latent.append({"latent": lat, "n_pairs": int(mine.sum()), "n_no_effect": int((mine & no_effect).sum()),
                               "mean": float(vals.mean()) if vals.numel() else None,
                               "fires_on": int(ex.n_fire[li])})
        q = [0.1, 0.25, 0.5, 0.75, 0.9]
        quant = torch.quantile(ok, torch.tensor(q, dtype=torch.float64)).tolist() if ok.numel() else [None] * len(q)
        n_ctx = int(torch.unique(pairs[:, 0]).numel()) if pairs.numel() else 0
        if no_effect.any():
            ctx.notes.append(f"ablation: {int(no_effect.sum())} (latent, position) pair(s) had no effect on the logits; left out of the score")
        return {
            "ablation_sparsity": float(ok.mean()) if ok.numel() else None,
            "ablation_sparsity_median": quant[2],
            "ablation_sparsity_quantiles": {f"p{round(x * 100)}": v for x, v in zip(q, quant, strict=True)},
            "ablation_sparsity_min": float(ok.min()) if ok.numel() else None,
            "ablation_sparsity_max": float(ok.max()) if ok.numel() else None,
            "n_pairs": int(pairs.shape[0]),
            "n_pairs_scored": int(ok.numel()),
            "n_no_effect": int(no_effect.sum()),
            "n_latents": int(latents.numel()),
            "n_contexts": n_ctx,
            "window": window,
            "d_vocab": int(ctx.model.d_vocab),
            "normalisation": "V*T with T = window positions starting at the ablated one; windows never truncated",
            "median": "per position over V entries (torch lower median)",
            "forward_calls": pipe.ablation_forward_batches - calls0,
            "naive_forward_calls": int(pairs.shape[0]) + n_ctx,
            "latents": per_latent,
            "_timing": {"states_s": round(t_states, 4), "sample_s": round(t_sample, 4), "ablate_s": round(t_run, 4),
                         "per_pair_s": round(t_run / max(1, int(pairs.shape[0])), 4)},
        }
