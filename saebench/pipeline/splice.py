"""Clean, spliced and ablated passes from the hook's block: the inputs of the core metrics.

Cost model (N layers, the hook restarting at block L): the prefix (``states``) is shared and
cached; ``ablation_losses`` (hook zero- and mean-ablated, independent of the SAE) run once per
(model, hook, token set) and are cached on disk; ``splice_stats`` is one loop over batches in
which the clean suffix runs once per batch and each SAE's spliced suffix beside it, so
KL(clean ‖ spliced) never needs clean logits stored. A cold core evaluation costs one full pass
plus (1 + 2) suffixes of (N-L)/N each; a warm one one clean and one spliced suffix.

Position 0 (the BOS) is kept clean in every spliced/ablated run and left out of every average:
reconstruction statistics use positions 1..T-1, loss statistics the predictions made at
positions 1..T-2 (the prediction made at position 0 does not depend on the splice).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from saebench.errors import SaebenchError
from saebench.pipeline.states import ActivationPipeline


@dataclass
class SpliceStats:
    """Per-token and per-latent sums for one SAE over the token set (float64).

    Reconstruction arrays are ``[n_seq, T-1]`` (positions 1..T-1), loss arrays ``[n_seq, T-2]``.
    ``sum_x``/``sum_x2`` are per-dimension sums over the same positions (pooled variance).
    """

    sq_err: torch.Tensor
    x_sq: torch.Tensor
    xhat_sq: torch.Tensor
    dot: torch.Tensor
    l0: torch.Tensor
    l1: torch.Tensor
    sum_x: torch.Tensor
    sum_x2: torch.Tensor
    fire_count: torch.Tensor
    ce_clean: torch.Tensor
    ce_spliced: torch.Tensor
    kl: torch.Tensor
    ce_zero: torch.Tensor
    ce_mean: torch.Tensor
    timing: dict[str, float] = field(default_factory=dict)


def loss_logits(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits of the predictions we average (positions 1..T-2), their log-sum-exp, and the
    per-token next-token CE = lse - logit[target] (float64, CPU).

    Only reductions over the vocabulary: no [B, T, V] log-softmax is materialised.
    """
    lg = logits[:, 1:-1].float()
    lse = torch.logsumexp(lg, -1)
    target = lg.gather(-1, tokens[:, 2:].to(lg.device).unsqueeze(-1)).squeeze(-1)
    return lg, lse, (lse - target).double().cpu()


def token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token next-token CE of predictions at positions 1..T-2, float64 ``[B, T-2]``."""
    return loss_logits(logits, tokens)[2]


def ablation_losses(pipe: ActivationPipeline) -> dict[str, torch.Tensor]:
    """Per-token CE with the hook zeroed / mean-ablated at positions >= 1 (cached on disk)."""
    return pipe.shared("ablation", lambda: _ablation_losses(pipe))


def _ablation_losses(pipe: ActivationPipeline) -> dict[str, torch.Tensor]:
    t0 = time.perf_counter()
    key = pipe.cache_key("ablation", pipe.tokens.fingerprint())

    def compute() -> dict[str, torch.Tensor]:
        states, toks = pipe.states(), pipe.tokens.tokens
        mean = pipe.mean_act()
        zero_ce, mean_ce = [], []
        for s in pipe.batch_starts("ablation baselines"):
            st = states[s : s + pipe.batch_size].to(pipe.model.device)
            tok = toks[s : s + pipe.batch_size]
            acts = pipe.acts_batch(st)
            zeroed = acts.clone()
            zeroed[:, 1:] = 0
            zero_ce.append(token_ce(pipe.model.suffix(st, pipe.site, zeroed), tok))
            meaned = acts.clone()
            meaned[:, 1:] = mean.to(acts.dtype).to(acts.device)
            mean_ce.append(token_ce(pipe.model.suffix(st, pipe.site, meaned), tok))
            pipe.counters.ablation_batches += 1
        return {"zero": torch.cat(zero_ce), "mean": torch.cat(mean_ce)}

    found, cached = pipe.cached_tensors("ablation", key, compute)
    pipe._time("ablation_cached_s" if cached else "ablation_s", t0)
    return found


def splice_stats(pipe: ActivationPipeline, saes: dict[str, Any]) -> dict[str, SpliceStats]:
    """Reconstruction, sparsity and spliced-loss sums for every SAE in one batched loop."""
    for label, sae in saes.items():
        pipe.check_sae(sae, label)
    ablation = ablation_losses(pipe)
    states, toks = pipe.states(), pipe.tokens.tokens
    acc: dict[str, dict[str, list[torch.Tensor]]] = {k: {} for k in saes}
    fire = {k: torch.zeros(int(s.d_sae), dtype=torch.int64) for k, s in saes.items()}
    sum_x = torch.zeros(pipe.hook_width(), dtype=torch.float64)
    sum_x2 = torch.zeros_like(sum_x)
    clean_s, sae_s = 0.0, dict.fromkeys(saes, 0.0)
    for s in pipe.batch_starts(f"clean + spliced ({len(saes)} SAE)"):
        t0 = time.perf_counter()
        st = states[s : s + pipe.batch_size].to(pipe.model.device)
        tok = toks[s : s + pipe.batch_size]
        acts = pipe.acts_batch(st)
        clean_logits = pipe.model.suffix(st, pipe.site)
        pipe.counters.clean_suffix_batches += 1
        # KL(p || q) = Σ_v p_v (l_v - lse) - Σ_v p_v (m_v - lse_m) for clean logits l and
        # spliced logits m: the clean term once per batch, per SAE one logsumexp and one dot.
        clean_lg, clean_lse, ce_clean = loss_logits(clean_logits, tok)
        clean_p = (clean_lg - clean_lse.unsqueeze(-1)).exp()
        clean_term = torch.linalg.vecdot(clean_p, clean_lg) - clean_lse
        del clean_logits, clean_lg
        x = acts[:, 1:].double()
        sum_x += x.sum((0, 1)).cpu()
        sum_x2 += (x * x).sum((0, 1)).cpu()
        clean_s += time.perf_counter() - t0
        for label, sae in saes.items():
            t1 = time.perf_counter()
            with torch.no_grad():
                z = sae.encode(acts[:, 1:])
                xhat = sae.decode(z)
            if tuple(xhat.shape) != tuple(acts[:, 1:].shape) or z.shape[-1] != sae.d_sae:
                raise SaebenchError(
                    f"SAE {label}: encode/decode gave shapes {list(z.shape)} / {list(xhat.shape)} "
                    f"for input {list(acts[:, 1:].shape)}; decode(encode(x)) must have x's shape"
                )
            if not bool(torch.isfinite(xhat).all()):
                raise SaebenchError(f"SAE {label} produced NaN/Inf reconstructions; check its weights")
            spliced = acts.clone()
            spliced[:, 1:] = xhat.to(acts.dtype)
            logits = pipe.model.suffix(st, pipe.site, spliced)
            pipe.counters.spliced_suffix_batches += 1
            lg, lse, ce_spliced = loss_logits(logits, tok)
            a = acc[label]
            xh = xhat.double()
            err = x - xh
            a.setdefault("sq_err", []).append((err * err).sum(-1).cpu())
            a.setdefault("x_sq", []).append((x * x).sum(-1).cpu())
            a.setdefault("xhat_sq", []).append((xh * xh).sum(-1).cpu())
            a.setdefault("dot", []).append((x * xh).sum(-1).cpu())
            active = z != 0
            a.setdefault("l0", []).append(active.sum(-1).double().cpu())
            a.setdefault("l1", []).append(z.double().abs().sum(-1).cpu())
            fire[label] += active.reshape(-1, z.shape[-1]).sum(0).cpu()
            a.setdefault("ce_spliced", []).append(ce_spliced)
            kl = (clean_term - (torch.linalg.vecdot(clean_p, lg) - lse)).clamp_min(0.0)  # >= 0; clamp float noise
            a.setdefault("kl", []).append(kl.double().cpu())
            a.setdefault("ce_clean", []).append(ce_clean)
            del logits, lg, z, xhat
            sae_s[label] += time.perf_counter() - t1
    pipe.timing["clean_suffix_s"] = pipe.timing.get("clean_suffix_s", 0.0) + clean_s
    out = {}
    for label in saes:
        cat = {k: torch.cat(v) for k, v in acc[label].items()}
        out[label] = SpliceStats(
            sum_x=sum_x,
            sum_x2=sum_x2,
            fire_count=fire[label],
            ce_zero=ablation["zero"],
            ce_mean=ablation["mean"],
            timing={"spliced_s": sae_s[label]},
            **cat,
        )
    return out
