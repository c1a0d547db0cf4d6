"""``--evals ablation``: downstream ablation sparsity.

Gao et al. 2024, "Scaling and evaluating sparse autoencoders", sec. 4.5.

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

Cost: :func:`ablation_effects` computes each context's un-ablated spliced logits
once and runs the ablations of many (latent, position) pairs, from different latents and
contexts, as rows of one suffix pass, each row cut at p + T.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.pipeline import ActivationPipeline, examples
from saebench.stats import Ratio, Samples


class AblationConfig(EvalConfig):
    """Settings of ``--evals ablation``; profiles set the sample sizes only."""

    n_latents: int = 16  # live latents sampled (seeded)
    latents: list[int] | None = None  # explicit latent indices instead of a sample
    positions_per_latent: int = 4  # active positions sampled per latent (uniform, seeded)
    window: int = 16  # T: positions scored, the ablated one included
    row_batch: int | None = None  # rows per suffix call (default: 4 x --batch-size)

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


@torch.no_grad()
def ablation_effects(
    pipe: ActivationPipeline, sae: Any, pairs: torch.Tensor, window: int, reduce: Any, row_batch: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Effect on the logits of ablating one latent at one position, for many (context, position, latent).

    ``pairs`` is ``[R, 3]`` int64 rows ``(seq, pos, latent)`` with ``1 <= pos`` and
    ``pos + window <= T``. Each context's spliced run (hook replaced by
    ``decode(encode(x))`` at kept positions; positions holding the BOS id clean, as in the core splice) is one row,
    computed once however many pairs use the context; an ablated row replaces position
    ``pos`` of that reconstruction by the reconstruction without the latent, i.e. subtracts
    ``decode(z) - decode(z with z_i = 0)`` computed at the encode's own shape (exact for any
    token-wise decoder, layer-norm SAEs included). Un-ablated and ablated rows of all
    latents and contexts share suffix passes from the hook's block, ``row_batch`` rows per
    call (default ``4 x batch_size``), sorted by length and each cut at its last needed
    position (later positions cannot matter to a causal model). Only the final residuals
    are kept; logits are formed for the ``window`` positions ``pos .. pos+window-1`` alone,
    so memory is O(row_batch x window x V), never O(rows x T x V).
    ``reduce([r, window, V] logit differences ablated - spliced)`` returns one float per row.

    Returns ``(values [R] float64, no_effect [R] bool)``: rows whose ablation leaves the
    reconstruction bit-identical (latent off there, or a zero decoder row) are not run;
    their value is NaN and ``no_effect`` is True.
    """
    pairs = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 3)
    ctx = pipe.tokens.ctx_len
    if pairs.numel() and (int(pairs[:, 1].min()) < 1 or int((pairs[:, 1] + window).max()) > ctx):
        raise SaebenchError(f"ablation positions must lie in 1..{ctx - window} for a {window}-position window")
    row_batch = row_batch or 4 * pipe.batch_size
    n_pairs = pairs.shape[0]
    values = torch.full((n_pairs,), float("nan"), dtype=torch.float64)
    no_effect = torch.zeros(n_pairs, dtype=torch.bool)
    if n_pairs == 0:
        return values, no_effect
    states = pipe.states()
    uniq = torch.unique(pairs[:, 0])
    local = {int(c): i for i, c in enumerate(uniq)}
    ctx_of = torch.tensor([local[int(s)] for s in pairs[:, 0]])
    spliced = torch.empty(uniq.numel(), ctx, pipe.hook_width(), dtype=pipe.model.dtype)
    contrib = torch.zeros(n_pairs, pipe.hook_width(), dtype=pipe.model.dtype)
    for s in range(0, uniq.numel(), pipe.batch_size):
        acts = pipe.acts_batch(states[uniq[s : s + pipe.batch_size]])
        z = sae.encode(acts[:, 1:])
        xhat = sae.decode(z)
        if tuple(xhat.shape) != tuple(acts[:, 1:].shape):
            raise SaebenchError(
                f"SAE decode(encode(x)) has shape {list(xhat.shape)} for input {list(acts[:, 1:].shape)}; it must "
                "keep x's shape"
            )
        sp = acts.clone()
        kept = (pipe.tokens.tokens[uniq[s : s + pipe.batch_size], 1:] != pipe.model.bos_id).to(acts.device)
        sp[:, 1:] = torch.where(kept.unsqueeze(-1), xhat.to(acts.dtype), acts[:, 1:])  # special positions clean
        spliced[s : s + acts.shape[0]] = sp.cpu()
        in_chunk = (ctx_of >= s) & (ctx_of < s + acts.shape[0])
        for lat in torch.unique(pairs[in_chunk, 2]).tolist():
            zc = z.clone()
            zc[..., lat] = 0
            diff = (xhat - sae.decode(zc)).cpu()
            rows = (in_chunk & (pairs[:, 2] == lat)).nonzero().squeeze(1)
            contrib[rows] = diff[ctx_of[rows] - s, pairs[rows, 1] - 1].to(contrib.dtype)
    live = contrib.ne(0).any(-1)
    no_effect |= ~live
    live_rows = live.nonzero().squeeze(1).tolist()
    if not live_rows:
        return values, no_effect
    # one row per used context (un-ablated) + one per live pair; (kind, index, end)
    ends = {}
    for r in live_rows:
        u = int(ctx_of[r])
        ends[u] = max(ends.get(u, 0), int(pairs[r, 1]) + window)
    jobs = [("base", u, e) for u, e in ends.items()] + [("abl", r, int(pairs[r, 1]) + window) for r in live_rows]
    jobs.sort(key=lambda j: -j[2])
    base_resid: dict[int, torch.Tensor] = {}
    abl_resid: dict[int, torch.Tensor] = {}
    dev = pipe.model.device
    for b0 in range(0, len(jobs), row_batch):
        group = jobs[b0 : b0 + row_batch]
        end = max(j[2] for j in group)
        us = torch.tensor([u if kind == "base" else int(ctx_of[u]) for kind, u, _ in group])
        rep = spliced[us, :end].clone()
        for g, (kind, r, _) in enumerate(group):
            if kind == "abl":
                rep[g, int(pairs[r, 1])] -= contrib[r]
        resid = pipe.model.final_resid(states[us, :end].to(dev), pipe.site, rep.to(dev))
        pipe.counters.suffix_row_batches += 1
        pipe.counters.suffix_rows += len(group)
        for g, (kind, r, e) in enumerate(group):
            if kind == "base":
                base_resid[r] = resid[g, :e].cpu()
            else:
                p = int(pairs[r, 1])
                abl_resid[r] = resid[g, p : p + window].cpu()
        del resid
    for b0 in range(0, len(live_rows), row_batch):
        rows = live_rows[b0 : b0 + row_batch]
        a = torch.stack([abl_resid[r] for r in rows]).to(dev)
        b = torch.stack([base_resid[int(ctx_of[r])][int(pairs[r, 1]) : int(pairs[r, 1]) + window] for r in rows]).to(
            dev
        )
        vals = reduce(pipe.model.unembed(a) - pipe.model.unembed(b))
        values[rows] = vals.double().cpu()
    return values, no_effect


METRICS = (
    Metric(
        "ablation_sparsity",
        "mean downstream-effect sparsity (‖Δ‖₁/‖Δ‖₂)²/(V·T) of one-latent ablations",
        "down",
        True,
        "",
        "ablation sparsity",
        0.01,
        Ratio("latent", {"sum": 1.0}, {"n": 1.0}),
    ),
    Metric("ablation_sparsity_median", "median of the same over (latent, position) pairs (descriptive: no interval)"),
    Metric("ablation_sparsity_min", "smallest pair score"),
    Metric("ablation_sparsity_max", "largest pair score"),
    Metric("n_pairs", "(latent, position) pairs sampled"),
    Metric("n_pairs_scored", "pairs with an effect on the logits"),
    Metric("n_no_effect", "pairs whose ablation changed no logit beyond a uniform shift"),
    Metric("n_latents", "latents sampled"),
    Metric("n_contexts", "contexts the pairs lie in"),
    Metric("window", "T: positions scored per ablation"),
    Metric("d_vocab", "V: vocabulary size"),
    Metric("forward_calls", "suffix calls spent"),
    Metric("naive_forward_calls", "suffix calls one call per ablation and per context would need"),
)


class AblationEvaluator:
    """``--evals ablation``: see module doc."""

    name = "ablation"
    needs = frozenset({"states"})
    Config = AblationConfig
    metrics = METRICS

    def run(self, ctx: EvalContext, cfg: EvalConfig) -> EvalOutput:
        assert isinstance(cfg, AblationConfig)
        pipe, sae = ctx.pipeline, ctx.sae
        seed = ctx.seed
        ctx_len = pipe.tokens.ctx_len
        window = cfg.window
        if window < 1 or cfg.positions_per_latent < 1:
            raise SaebenchError("ablation: window and positions_per_latent must be >= 1; fix the --set values")
        if ctx_len - window < 1:
            window = ctx_len - 1
            ctx.notes.append(
                f"ablation: window shortened from {cfg.window} to {window} to fit {ctx_len}-token contexts"
            )
        t0 = time.perf_counter()
        latents, _ = examples.choose_latents(pipe, sae, cfg.latents, cfg.n_latents, seed, "ablation")
        ex = examples.latent_examples(
            pipe, sae, latents, n_random=cfg.positions_per_latent, seed=seed, positions=(1, ctx_len - window)
        )
        rs = ex.random
        pairs = torch.stack([rs.seq[rs.valid], rs.pos[rs.valid], latents[:, None].expand_as(rs.seq)[rs.valid]], 1)
        t_sample = time.perf_counter() - t0
        calls0 = pipe.counters.suffix_row_batches
        t0 = time.perf_counter()
        values, no_effect = ablation_effects(pipe, sae, pairs, window, ablation_sparsity, cfg.row_batch)
        t_run = time.perf_counter() - t0
        no_effect = no_effect | values.isnan()
        ok = values[~no_effect]
        per_latent = []
        for li, lat in enumerate(latents.tolist()):
            mine = pairs[:, 2] == lat
            vals = values[mine & ~no_effect]
            per_latent.append(
                {
                    "latent": lat,
                    "n_pairs": int(mine.sum()),
                    "n_no_effect": int((mine & no_effect).sum()),
                    "mean": float(vals.mean()) if vals.numel() else None,
                    "fires_on": int(ex.n_fire[li]),
                }
            )
        q = [0.1, 0.25, 0.5, 0.75, 0.9]
        quant = torch.quantile(ok, torch.tensor(q, dtype=torch.float64)).tolist() if ok.numel() else [None] * len(q)
        n_ctx = int(torch.unique(pairs[:, 0]).numel()) if pairs.numel() else 0
        if no_effect.any():
            ctx.notes.append(
                f"ablation: {int(no_effect.sum())} (latent, position) pair(s) had no effect on the logits; left out "
                "of the score"
            )
        # ablation_sparsity = Σ sum / Σ n over latents: the mean over scored pairs, bootstrapped by latent
        samples = {
            "latent": Samples(
                "latent",
                [ctx.latent_id(r["latent"]) for r in per_latent],
                {
                    "sum": [float(values[(pairs[:, 2] == r["latent"]) & ~no_effect].sum()) for r in per_latent],
                    "n": [r["n_pairs"] - r["n_no_effect"] for r in per_latent],
                },
            )
        }
        metrics = {
            "ablation_sparsity_median": quant[2],
            "ablation_sparsity_min": float(ok.min()) if ok.numel() else None,
            "ablation_sparsity_max": float(ok.max()) if ok.numel() else None,
            "n_pairs": int(pairs.shape[0]),
            "n_pairs_scored": int(ok.numel()),
            "n_no_effect": int(no_effect.sum()),
            "n_latents": int(latents.numel()),
            "n_contexts": n_ctx,
            "window": window,
            "d_vocab": int(ctx.model.d_vocab),
            "forward_calls": pipe.counters.suffix_row_batches - calls0,
            "naive_forward_calls": int(pairs.shape[0]) + n_ctx,
        }
        details = {
            "ablation_sparsity_quantiles": {f"p{round(x * 100)}": v for x, v in zip(q, quant, strict=True)},
            "normalisation": "V*T with T = window positions starting at the ablated one; windows never truncated",
            "median": "per position over V entries (torch lower median)",
            "latents": per_latent,
        }
        return EvalOutput(
            metrics,
            details,
            samples=samples,
            timing={"sample_s": t_sample, "ablate_s": t_run, "per_pair_s": t_run / max(1, int(pairs.shape[0]))},
        )
