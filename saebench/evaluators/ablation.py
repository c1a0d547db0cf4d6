"""``--evals ablation``: downstream ablation sparsity.

Gao et al. 2024, "Scaling and evaluating sparse autoencoders", sec. 4.5 ("sparsity of ablation
effects").

Does removing one latent change few or many of the model's predictions? The paper ablates every
active latent at sampled tokens, so a latent weighs in proportion to how often it fires. Here the
same estimand is sampled directly: ``n_pairs`` (position, latent) pairs drawn uniformly, without
replacement, among all *active* pairs (z > 0) of the evaluation contexts whose window fits
(:func:`saebench.pipeline.examples.active_pairs`); a token with many active latents contributes
accordingly, exactly as ablating all of them would. For each pair:

1. splice the SAE's reconstruction into the hook (positions ≥ 1; BOS kept clean as in core);
2. ablate the latent at position p: subtract its decoder contribution
   ``decode(z) - decode(z with z_i = 0)`` at p only;
3. run the model from the hook's block; Δ_{t,v} = logit_ablated − logit_spliced at the T
   positions p .. p+T−1 (the ablated position and the next T−1) for all V vocabulary entries;
4. subtract each position's median over the V entries (a uniform logit shift changes no
   probability), zero what is left below float32 rounding (8 ulps of the position's largest
   spliced logit), concatenate the T rows into one vector of V·T entries, and score

       s = (‖Δ‖₁ / ‖Δ‖₂)² / (V·T)        ∈ (0, 1]    (Gao et al. 2024, sec. 4.5)

   s = 1/(V·T) when a single logit moves, 1 when all V·T centred entries move by the same
   magnitude; lower is sparser. A pair whose Δ is nothing but a uniform shift per position (or
   rounding) changed no probability: it has *no effect*, is counted in ``n_no_effect`` and is
   left out of the mean (never NaN in the result).

The **random-direction null** (``ablation_sparsity_random``): at the same position of the same
pair, subtract a random Gaussian direction with the norm of the latent's decoder contribution
instead, scored the same way. ``ablation_sparsity_minus_random`` is the paired difference
(negative: latent ablations are sparser than equally large random edits).

Intervals: over the contexts the pairs lie in, resampling whole source documents (contexts of one
document are not independent; :mod:`saebench.stats`); unit ids are context hashes, so two SAEs
evaluated on the same token set pair context by context. Choices: T = ``window`` positions
counted from the ablated one (V·T is exactly the number of entries, s ≤ 1 by Cauchy-Schwarz);
positions are sampled only where the whole window fits (p ≤ ctx_len − T; never truncated); the
median is torch's lower median for even V.

The earlier ``ablation_sparsity`` averaged 16 uniformly drawn latents with equal weight at 4
positions each (a latent firing once counted as much as one firing everywhere); it is a
different estimand, hence the new name ``ablation_sparsity_active``.

A transcoder (docs/transcoders.md) is spliced and ablated at its output hook: its prediction
replaces the output activation, and a latent's contribution is its change to that prediction;
which pairs are active is read from the latents of its input, as for every evaluator.

Cost: :func:`ablation_effects` computes each context's un-ablated spliced logits once and runs
the ablations of many pairs (and their random-direction twins), from different latents and
contexts, as rows of one suffix pass, each row cut at p + T.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch

from saebench.errors import SaebenchError
from saebench.evaluators.base import EvalConfig, EvalContext, EvalOutput, Metric
from saebench.pipeline import ActivationPipeline, examples
from saebench.sae import reconstruct
from saebench.stats import Ratio, Samples

ROUNDING_ULPS = 8.0  # differences below this many float32 ulps of the logits are rounding, not effect


class AblationConfig(EvalConfig):
    """Settings of ``--evals ablation``; profiles set the sample sizes only."""

    n_pairs: int = 64  # (position, active latent) pairs sampled uniformly among all active pairs
    latents: list[int] | None = None  # restrict the pairs to these latents (still uniform over their firings)
    window: int = 16  # T: positions scored, the ablated one included
    random_null: bool = True  # also ablate a random direction of the same norm at each pair
    row_batch: int | None = None  # rows per suffix call (default: 4 x --batch-size)

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"n_pairs": 64},
        "standard": {"n_pairs": 512},
        "paper": {"n_pairs": 4096},
    }


def ablation_sparsity(delta: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    """Gao et al.'s downstream-effect sparsity of logit differences ``delta [..., T, V]`` → ``[...]``.

    Δ ← Δ − median_v(Δ) per position; entries within ``ROUNDING_ULPS`` float32 ulps of the
    position's largest |logit| in ``base`` (the un-ablated logits, same shape; none given: no
    rounding floor) are set to 0; s = (‖Δ‖₁/‖Δ‖₂)² / (V·T) over the concatenated T·V entries
    (float64), clamped to ≤ 1 against rounding. NaN marks *no effect* (nothing left after the
    median: a uniform shift per position, or rounding only); callers count it, never average it.
    """
    d = delta.double()
    d = d - d.median(dim=-1, keepdim=True).values
    if base is not None:
        ulp = torch.finfo(torch.float32).eps * base.double().abs().amax(dim=-1, keepdim=True)
        d = torch.where(d.abs() <= ROUNDING_ULPS * ulp, torch.zeros_like(d), d)
    flat = d.flatten(-2)
    l1, l2 = flat.abs().sum(-1), flat.norm(dim=-1)
    score = ((l1 / l2.clamp_min(1e-300)) ** 2 / flat.shape[-1]).clamp_max(1.0)
    return torch.where(l2 > 0, score, torch.full_like(score, float("nan")))


def random_directions(norms: torch.Tensor, d: int, seed: int) -> torch.Tensor:
    """One Gaussian direction per row with the given L2 norms, float32 ``[R, d]`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(norms.numel(), d, generator=g)
    return r / r.norm(dim=1, keepdim=True) * norms.float().reshape(-1, 1)


@torch.no_grad()
def ablation_effects(
    pipe: ActivationPipeline,
    sae: Any,
    pairs: torch.Tensor,
    window: int,
    reduce: Any,
    row_batch: int | None = None,
    null_seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
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
    ``reduce(delta, base)`` gets the ``[r, window, V]`` logit differences ablated − spliced and the
    spliced logits there, and returns one float per row.

    With ``null_seed``, every live pair also gets a twin row that subtracts a random Gaussian
    direction with the norm of the latent's contribution (:func:`random_directions`) at the same
    position instead: the random-direction null, run in the same suffix passes.

    Returns ``(values [R] float64, no_effect [R] bool, null [R] float64 or None)``: rows whose
    ablation leaves the reconstruction bit-identical (latent off there, or a zero decoder row) are
    not run; their values are NaN and ``no_effect`` is True.
    """
    pairs = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 3)
    ctx = pipe.tokens.ctx_len
    if pairs.numel() and (int(pairs[:, 1].min()) < 1 or int((pairs[:, 1] + window).max()) > ctx):
        raise SaebenchError(f"ablation positions must lie in 1..{ctx - window} for a {window}-position window")
    row_batch = row_batch or 4 * pipe.batch_size
    n_pairs = pairs.shape[0]
    values = torch.full((n_pairs,), float("nan"), dtype=torch.float64)
    null = values.clone() if null_seed is not None else None
    no_effect = torch.zeros(n_pairs, dtype=torch.bool)
    if n_pairs == 0:
        return values, no_effect, null
    states = pipe.states()
    uniq = torch.unique(pairs[:, 0])
    local = {int(c): i for i, c in enumerate(uniq)}
    ctx_of = torch.tensor([local[int(s)] for s in pairs[:, 0]])
    target = pipe.target(sae)  # a transcoder's output hook: spliced and ablated there
    width = pipe.target_width(target)
    spliced = torch.empty(uniq.numel(), ctx, width, dtype=pipe.model.dtype)
    contrib = torch.zeros(n_pairs, width, dtype=pipe.model.dtype)
    for s in range(0, uniq.numel(), pipe.batch_size):
        x_in, acts = pipe.target_acts(states[uniq[s : s + pipe.batch_size]], target)
        z = sae.encode(x_in[:, 1:])
        xhat = reconstruct(sae, x_in[:, 1:], z)
        if tuple(xhat.shape) != tuple(acts[:, 1:].shape):
            raise SaebenchError(
                f"SAE decode(encode(x)) has shape {list(xhat.shape)} for input {list(x_in[:, 1:].shape)}; it must "
                f"have the shape of the activation it replaces, {list(acts[:, 1:].shape)}"
            )
        sp = acts.clone()
        kept = (pipe.tokens.tokens[uniq[s : s + pipe.batch_size], 1:] != pipe.model.bos_id).to(acts.device)
        sp[:, 1:] = torch.where(kept.unsqueeze(-1), xhat.to(acts.dtype), acts[:, 1:])  # special positions clean
        spliced[s : s + acts.shape[0]] = sp.cpu()
        in_chunk = (ctx_of >= s) & (ctx_of < s + acts.shape[0])
        for lat in torch.unique(pairs[in_chunk, 2]).tolist():
            zc = z.clone()
            zc[..., lat] = 0
            diff = (xhat - reconstruct(sae, x_in[:, 1:], zc)).cpu()
            rows = (in_chunk & (pairs[:, 2] == lat)).nonzero().squeeze(1)
            contrib[rows] = diff[ctx_of[rows] - s, pairs[rows, 1] - 1].to(contrib.dtype)
    live = contrib.ne(0).any(-1)
    no_effect |= ~live
    live_rows = live.nonzero().squeeze(1).tolist()
    if not live_rows:
        return values, no_effect, null
    edits = {"abl": contrib}
    if null_seed is not None:
        edits["rnd"] = random_directions(contrib.double().norm(dim=1), contrib.shape[1], null_seed).to(contrib.dtype)
    # one row per used context (un-ablated) + one per live pair and edit kind; (kind, index, end)
    ends = {}
    for r in live_rows:
        u = int(ctx_of[r])
        ends[u] = max(ends.get(u, 0), int(pairs[r, 1]) + window)
    jobs = [("base", u, e) for u, e in ends.items()]
    jobs += [(kind, r, int(pairs[r, 1]) + window) for kind in edits for r in live_rows]
    jobs.sort(key=lambda j: -j[2])
    base_resid: dict[int, torch.Tensor] = {}
    edit_resid: dict[tuple[str, int], torch.Tensor] = {}
    dev = pipe.model.device
    for b0 in range(0, len(jobs), row_batch):
        group = jobs[b0 : b0 + row_batch]
        end = max(j[2] for j in group)
        us = torch.tensor([u if kind == "base" else int(ctx_of[u]) for kind, u, _ in group])
        rep = spliced[us, :end].clone()
        for g, (kind, r, _) in enumerate(group):
            if kind != "base":
                rep[g, int(pairs[r, 1])] -= edits[kind][r]
        resid = pipe.model.final_resid(states[us, :end].to(dev), target.site, rep.to(dev))
        pipe.counters.suffix_row_batches += 1
        pipe.counters.suffix_rows += len(group)
        for g, (kind, r, e) in enumerate(group):
            if kind == "base":
                base_resid[r] = resid[g, :e].cpu()
            else:
                p = int(pairs[r, 1])
                edit_resid[(kind, r)] = resid[g, p : p + window].cpu()
        del resid
    for b0 in range(0, len(live_rows), row_batch):
        rows = live_rows[b0 : b0 + row_batch]
        b = torch.stack([base_resid[int(ctx_of[r])][int(pairs[r, 1]) : int(pairs[r, 1]) + window] for r in rows]).to(
            dev
        )
        base_logits = pipe.model.unembed(b)
        for kind, out in (("abl", values), ("rnd", null)):
            if out is None:
                continue
            a = torch.stack([edit_resid[(kind, r)] for r in rows]).to(dev)
            out[rows] = reduce(pipe.model.unembed(a) - base_logits, base_logits).double().cpu()
    return values, no_effect, null


METRICS = (
    Metric(
        "ablation_sparsity_active",
        "mean downstream-effect sparsity (‖Δ‖₁/‖Δ‖₂)²/(V·T) over (token, active latent) pairs sampled uniformly",
        "down",
        True,
        "",
        "ablation sparsity",
        0.01,
        Ratio("context", {"sum": 1.0}, {"n": 1.0}),
    ),
    Metric(
        "ablation_sparsity_random",
        "the same for a random direction with the norm of the latent's contribution, at the same pairs (the null)",
        "",
        False,
        "",
        "",
        0.0,
        Ratio("context", {"null_sum": 1.0}, {"null_n": 1.0}),
    ),
    Metric(
        "ablation_sparsity_minus_random",
        "mean over pairs of latent-ablation sparsity minus its random-direction twin (< 0: sparser than random)",
        "down",
        False,
        "",
        "",
        0.01,
        Ratio("context", {"diff_sum": 1.0}, {"diff_n": 1.0}),
    ),
    Metric("ablation_sparsity_median", "median over scored pairs (descriptive: no interval)"),
    Metric("ablation_sparsity_min", "smallest pair score"),
    Metric("ablation_sparsity_max", "largest pair score"),
    Metric("n_pairs", "(position, active latent) pairs sampled"),
    Metric("n_pairs_scored", "pairs with an effect on the logits"),
    Metric("n_no_effect", "pairs whose ablation changed no logit beyond a uniform shift (or rounding)"),
    Metric("n_active_pairs", "active (position, latent) pairs the sample was drawn from"),
    Metric("n_latents", "distinct latents among the sampled pairs"),
    Metric("n_contexts", "contexts the pairs lie in"),
    Metric("window", "T: positions scored per ablation"),
    Metric("d_vocab", "V: vocabulary size"),
    Metric("forward_calls", "suffix calls spent"),
    Metric("naive_forward_calls", "suffix calls one call per edited row and per context would need"),
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
        if window < 1 or cfg.n_pairs < 1:
            raise SaebenchError("ablation: window and n_pairs must be >= 1; fix the --set values")
        if ctx_len - window < 1:
            window = ctx_len - 1
            ctx.notes.append(
                f"ablation: window shortened from {cfg.window} to {window} to fit {ctx_len}-token contexts"
            )
        t0 = time.perf_counter()
        pairs, n_active = examples.active_pairs(
            pipe, sae, cfg.n_pairs, seed, positions=(1, ctx_len - window), latents=cfg.latents
        )
        t_sample = time.perf_counter() - t0
        calls0 = pipe.counters.suffix_row_batches
        t0 = time.perf_counter()
        values, no_effect, null = ablation_effects(
            pipe, sae, pairs, window, ablation_sparsity, cfg.row_batch, null_seed=seed if cfg.random_null else None
        )
        t_run = time.perf_counter() - t0
        no_effect = no_effect | values.isnan()
        ok = values[~no_effect]
        null_ok = (~null.isnan()) if null is not None else torch.zeros_like(no_effect)
        both = ~no_effect & null_ok
        seq_ids = ctx.tokens.seq_ids()
        ctxs = sorted(set(pairs[:, 0].tolist())) if pairs.numel() else []
        cols: dict[str, list[Any]] = {c: [] for c in ("sum", "n", "null_sum", "null_n", "diff_sum", "diff_n")}
        for c in ctxs:
            mine = pairs[:, 0] == c
            cols["sum"].append(float(values[mine & ~no_effect].sum()))
            cols["n"].append(int((mine & ~no_effect).sum()))
            if null is not None:
                cols["null_sum"].append(float(null[mine & null_ok].sum()))
                cols["null_n"].append(int((mine & null_ok).sum()))
                cols["diff_sum"].append(float((values - null)[mine & both].sum()))
                cols["diff_n"].append(int((mine & both).sum()))
        if null is None:
            for c in ("null_sum", "null_n", "diff_sum", "diff_n"):
                cols.pop(c)
        per_latent = []
        for lat in sorted(set(pairs[:, 2].tolist())) if pairs.numel() else []:
            mine = pairs[:, 2] == lat
            vals = values[mine & ~no_effect]
            per_latent.append(
                {
                    "latent": lat,
                    "n_pairs": int(mine.sum()),
                    "n_no_effect": int((mine & no_effect).sum()),
                    "mean": float(vals.mean()) if vals.numel() else None,
                    "mean_random": float(null[mine & null_ok].mean())
                    if null is not None and bool((mine & null_ok).any())
                    else None,
                }
            )
        q = [0.1, 0.25, 0.5, 0.75, 0.9]
        quant = torch.quantile(ok, torch.tensor(q, dtype=torch.float64)).tolist() if ok.numel() else [None] * len(q)
        if no_effect.any():
            ctx.notes.append(
                f"ablation: {int(no_effect.sum())} (position, latent) pair(s) had no effect on the logits; left out "
                "of the score"
            )
        n_rows = int((~no_effect).sum()) * (2 if null is not None else 1)
        metrics = {
            "ablation_sparsity_median": quant[2],
            "ablation_sparsity_min": float(ok.min()) if ok.numel() else None,
            "ablation_sparsity_max": float(ok.max()) if ok.numel() else None,
            "n_pairs": int(pairs.shape[0]),
            "n_pairs_scored": int(ok.numel()),
            "n_no_effect": int(no_effect.sum()),
            "n_active_pairs": n_active,
            "n_latents": len(per_latent),
            "n_contexts": len(ctxs),
            "window": window,
            "d_vocab": int(ctx.model.d_vocab),
            "forward_calls": pipe.counters.suffix_row_batches - calls0,
            "naive_forward_calls": n_rows + len(ctxs),
        }
        details = {
            "ablation_sparsity_quantiles": {f"p{round(x * 100)}": v for x, v in zip(q, quant, strict=True)},
            "sampling": "uniform over active (position, latent) pairs with the window inside the context: every "
            "active latent at sampled tokens, frequent latents weighted by their frequency (Gao et al. sec. 4.5)",
            "normalisation": "V*T with T = window positions starting at the ablated one; windows never truncated",
            "median": "per position over V entries (torch lower median); below 8 float32 ulps of the position's "
            "largest logit counts as 0",
            "null": "a Gaussian direction with the norm of the latent's decoder contribution, subtracted at the same "
            "position"
            if null is not None
            else None,
            "pairs": [
                {
                    "seq": int(p[0]),
                    "pos": int(p[1]),
                    "latent": int(p[2]),
                    "value": None if bool(no_effect[i]) else float(values[i]),
                    "random": float(null[i]) if null is not None and bool(null_ok[i]) else None,
                }
                for i, p in enumerate(pairs)
            ],
            "latents": per_latent,
        }
        docs = ctx.tokens.doc_ids
        clusters = [docs[c] for c in ctxs] if docs is not None and len(docs) == len(seq_ids) else None
        samples = (
            {"context": Samples("context", [seq_ids[c] for c in ctxs], cols, clusters, "document" if clusters else "")}
            if ctxs
            else {}
        )
        return EvalOutput(
            metrics,
            details,
            samples=samples,
            timing={"sample_s": t_sample, "ablate_s": t_run, "per_pair_s": t_run / max(1, int(pairs.shape[0]))},
        )
