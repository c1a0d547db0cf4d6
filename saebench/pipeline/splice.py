"""Clean, spliced and ablated passes from the hook's block: the inputs of the core metrics.

Special positions. Every position holding the BOS id (position 0 of every context, and the same
id where it separates documents inside a context) is *special*: it is kept clean in every
spliced run, and left out of every average (SAEBench's ``exclude_special_tokens_from_
reconstruction`` with ``ignore_tokens = {BOS}``). The other positions are *kept*:

- reconstruction statistics use the kept positions;
- CE uses the predictions made at kept positions p = 0..T-2 (of token p+1, whatever it is);
- KL(clean ‖ other) uses every kept position p = 0..T-1 (the last position has no CE target but
  has a distribution).

Ablation baselines (independent of the SAE, cached on disk per model, hook, token set and
ablation): ``zero_all`` zeroes the hook at *every* position, BOS included (SAEBench's and
SAELens's zero ablation: CE = ln V on the embedded model); it is always computed, because
``ce_loss_score`` and ``kl_div_score`` need it. ``zero_kept`` and ``mean_kept`` replace only the
kept positions (special positions clean) by zero or by the token set's mean activation (our
variants): computed only when asked (``ablations=``; core asks with
``--set core.ablation_variants=true``). A baseline missing from the cache is computed in the same
loop as the clean pass (one extra suffix per batch per baseline, once), then read from the cache.
At a residual hook ``zero_all`` needs no suffix per batch: a zero state carries no token, so one
context of zeros gives every context's logits (:func:`_zero_all_run`).

The clean side. KL(p ‖ q) = Σ_v p_v log p_v − Σ_v p_v m_v + lse_m needs, per position, the clean
term Σ p log p and Σ_v p_v m_v against every other run. When the model's logits are affine in the
normalised final residual n (m = n · W_U + b_U: every model without a logit soft cap),
Σ_v p_v m_v = n · wbar + p · b_U with wbar = Σ_v p_v W_U[:, v], so the clean distribution reduces
to d_model + 2 numbers per position (:class:`CleanBatch`). That reduction is cached on disk per
(model, hook, token set) like the ablation baselines: a warm run runs **no clean suffix**, and
ksweep or a second group of SAEs reuse it. Soft-capped models (Gemma-2) keep p ``[B, T, V]`` and
run the clean suffix every time.

Cost model (N layers, hook restarting at block L): the prefix is shared and cached; the clean
suffix once per token set (cold: plus one p @ W_U^T product, about a quarter of a pass on
SmolLM2); per batch one spliced suffix per SAE, from block L, with one chunked logsumexp over the
vocabulary (docs/performance.md).

Transcoders (docs/transcoders.md) write another hook than they read: their loop reads the input and
the output hook in one pass over the input's block, compares the prediction with the output, splices
it into the output hook, and ablates the output hook for the baselines (cached per output hook as
``<ablation>@<hook>``; an SAE's entries keep their names). SAEs and transcoders at one input hook
share the prefix states and the clean side; each output hook is its own loop over the batches.

Everything is accumulated per context in float64 (:class:`SpliceStats`), so the core metrics
and their intervals over contexts (grouped by source document) follow from the same sums, and no
number depends on the batch size.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from saebench.errors import SaebenchError
from saebench.models import HookSite
from saebench.pipeline.states import ActivationPipeline, SpliceTarget
from saebench.pipeline.stored import PrefixStates
from saebench.sae import reconstruct

#: per-context float64 sums for reconstruction (kept positions)
REC_COLUMNS = ("n_rec", "sq_err", "x_sq", "cos", "l2_in", "l2_out", "l2_ratio", "xhat_sq", "dot", "l0", "l1")
#: per-context float64 sums for losses (CE over kept predictions, KL over kept positions)
LOSS_COLUMNS = ("n_ce", "ce_clean", "ce_spliced", "n_kl", "kl_spliced")
#: every ablation baseline the splice loop knows; ``zero_all`` is always computed (the published scores need it)
ABLATIONS = ("zero_all", "zero_kept", "mean_kept")
DEFAULT_ABLATIONS = ("zero_all",)
#: densities are bootstrapped over contexts from per-context firing counts up to this many entries
FIRE_BY_SEQ_MAX = 2**23


@dataclass
class SpliceStats:
    """Per-context sums (float64 ``[n_seq]`` each) for one SAE over the token set.

    ``cols`` holds :data:`REC_COLUMNS`, :data:`LOSS_COLUMNS` and, from the ablation baselines,
    ``ce_<ablation>`` and ``kl_zero_all``. ``sum_x`` ``[n_seq, d]`` are per-context sums of x
    (for the pooled variance about the global mean), ``fire_count`` ``[d_sae]`` counts the kept
    positions where each latent is non-zero (SAEBench counts z > 0: the same for every
    non-negative latent), ``fire_by_seq`` ``[n_seq, d_sae]`` the same per context
    (None when ``n_seq x d_sae`` exceeds :data:`FIRE_BY_SEQ_MAX`). ``doc_ids`` names each
    context's source document (the token set's, None when it has none): intervals over contexts
    resample whole documents.
    """

    cols: dict[str, torch.Tensor]
    sum_x: torch.Tensor
    fire_count: torch.Tensor
    fire_by_seq: torch.Tensor | None
    seq_ids: list[str]
    timing: dict[str, float] = field(default_factory=dict)
    doc_ids: list[str] | None = None

    def var(self) -> torch.Tensor:
        """Per-context Σ_t ‖x_t − μ‖² about the global mean μ of the kept positions (float64)."""
        n = self.cols["n_rec"]
        mu = self.sum_x.sum(0) / n.sum().clamp_min(1)
        return self.cols["x_sq"] - 2 * (self.sum_x @ mu) + n * (mu @ mu)


def special_mask(tokens: torch.Tensor, bos_id: int) -> torch.Tensor:
    """True where a position holds the BOS id (kept clean and out of every average)."""
    return tokens == bos_id


#: rows (positions) per chunk of the vocabulary-wide reductions: a [32, V] slice (6 MB at V = 49,152)
#: stays in cache across its max, exp, sum and dot, where whole-batch ops stream [B*T, V] through
#: memory several times and allocate a fresh [B*T, V] temporary each (docs/performance.md)
ROW_CHUNK = 32


def _clean_logit_stats(
    logits: torch.Tensor, tokens: torch.Tensor, p_buf: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """From the clean logits ``[B, T, V]``: the clean probabilities (written into ``p_buf`` when its
    shape fits, so batches reuse one buffer), the clean term Σ_v p_v (l_v − lse) ``[B, T]``, the
    log-sum-exp ``[B, T]`` and the next-token CE of predictions at p = 0..T-2 (float64 ``[B, T-1]``).
    One exp per logit, in row chunks (:data:`ROW_CHUNK`)."""
    lg = logits.float()
    b, t, v = lg.shape
    flat = lg.reshape(b * t, v)
    p = p_buf if p_buf is not None and p_buf.shape == lg.shape else torch.empty_like(lg)
    p_flat = p.view(b * t, v)
    lse = torch.empty(b * t, dtype=lg.dtype, device=lg.device)
    term = torch.empty_like(lse)
    for i in range(0, b * t, ROW_CHUNK):
        x, e = flat[i : i + ROW_CHUNK], p_flat[i : i + ROW_CHUNK]
        mx = x.amax(-1, keepdim=True)
        torch.sub(x, mx, out=e).exp_()
        s = e.sum(-1, keepdim=True)
        e.div_(s)
        lse_c = (mx + s.log()).squeeze(-1)
        lse[i : i + ROW_CHUNK] = lse_c
        term[i : i + ROW_CHUNK] = torch.linalg.vecdot(e, x) - lse_c
    lse, term = lse.view(b, t), term.view(b, t)
    return p, term, lse, _next_token_ce(lg, lse, tokens)


@dataclass
class CleanBatch:
    """The clean distribution p of one batch, reduced to what every KL(p ‖ q) against it needs.

    ``term`` = Σ_v p_v log p_v ``[B, T]`` and ``ce`` the clean next-token CE ``[B, T-1]`` (float64
    both when the logits are affine).
    When the model's logits are affine in the normalised final residual n (no soft cap),
    Σ_v p_v m_v = n_q · wbar + pb with wbar = Σ_v p_v W_U[:, v] ``[B, T, d_model]`` and pb = p · b_U
    ``[B, T]``: d_model numbers per position instead of V, so the clean side is cached on disk and a
    warm run needs no clean suffix. Otherwise (soft-capped logits) ``p`` ``[B, T, V]`` itself."""

    term: torch.Tensor
    ce: torch.Tensor
    wbar: torch.Tensor | None = None
    pb: torch.Tensor | None = None
    p: torch.Tensor | None = None


#: per-position columns of the cached clean side beside wbar (affine logits only)
CLEAN_COLUMNS = ("clean_term", "ce_clean", "pb")


def _clean_batch(
    pipe: ActivationPipeline, st: torch.Tensor, tok: torch.Tensor, affine: Any, p_buf: torch.Tensor | None
) -> tuple[CleanBatch, torch.Tensor]:
    """The clean suffix of one batch, reduced (:class:`CleanBatch`), and the probability buffer it
    used (``p_buf`` when its shape fits: the next batch reuses it)."""
    normed = pipe.model.final_norm(pipe.model.final_resid(st, pipe.site))
    p, term, lse, ce = _clean_logit_stats(pipe.model.logits_from_normed(normed), tok, p_buf)
    if affine is None:
        return CleanBatch(term, ce, p=p), p
    w_u, b_u = affine
    b, t, v = p.shape
    flat = p.view(b * t, v)
    wbar = (flat @ w_u.T).view(b, t, -1)
    pb = (flat @ b_u).view(b, t).double() if bool(b_u.any()) else torch.zeros(b, t, dtype=torch.float64)
    # the clean term by the same route as every Σ p m against it (float64 dot with wbar): then
    # KL = (n_clean − n_run) · wbar + lse_run − lse_clean, exactly 0 for a run equal to the clean one
    term = _dot(normed, wbar) + pb - lse.double()
    return CleanBatch(term, ce, wbar=wbar, pb=pb), p


def _dot(normed: torch.Tensor, wbar: torch.Tensor) -> torch.Tensor:
    """n · wbar per position in float64 (``normed`` may be one context standing for the batch)."""
    return (normed.double() * wbar.double()).sum(-1)


def _clean_side(pipe: ActivationPipeline, affine: Any) -> tuple[PrefixStates, dict[str, torch.Tensor]]:
    """The clean side of the whole token set for affine logits: wbar ``[n_seq, T, d_model]`` as a
    streamed array (read a batch at a time, like the prefix states: memory stays bounded at any
    token count) and the per-position columns :data:`CLEAN_COLUMNS`; both cached per (model, hook,
    token set), so only a cold run pays the clean suffix."""
    small = _cached(pipe, "clean", "side", set(CLEAN_COLUMNS))
    collected: dict[str, list[torch.Tensor]] = {c: [] for c in CLEAN_COLUMNS}

    def batches() -> Iterator[torch.Tensor]:
        for parts in collected.values():
            parts.clear()  # a retry (a cache write that failed) starts over
        states, toks, p_buf = pipe.states(), pipe.tokens.tokens, None
        for s in pipe.batch_starts("clean suffix"):
            sl = slice(s, s + pipe.batch_size)
            clean, p_buf = _clean_batch(pipe, states[sl].to(pipe.model.device), toks[sl], affine, p_buf)
            pipe.counters.clean_suffix_batches += 1
            for k, v in zip(CLEAN_COLUMNS, (clean.term, clean.ce, clean.pb), strict=True):
                collected[k].append(v.cpu())
            yield clean.wbar.float().cpu()

    n_seq, t = pipe.tokens.tokens.shape
    shape = (int(n_seq), int(t), int(affine[0].shape[0]))
    wbar = pipe.streamed("wbar", shape, torch.float32, batches, time_label="clean_suffix")
    if small is None:
        if not collected["clean_term"]:  # wbar was cached but its columns were not: recompute them
            for _ in batches():
                pass
        small = _store(pipe, "clean", "side", {k: torch.cat(v) for k, v in collected.items()})
    return wbar, small


def _run(
    pipe: ActivationPipeline, st: torch.Tensor, replacement: torch.Tensor, affine: Any, site: HookSite | None = None
) -> torch.Tensor:
    """A run with the hook (``site``, default the pipeline's) replaced, as :func:`_kl_ce` reads it: the
    normalised final residual when the logits are affine in it, else the logits."""
    site = pipe.site if site is None else site
    if affine is None:
        return pipe.model.suffix(st, site, replacement)
    return pipe.model.final_norm(pipe.model.final_resid(st, site, replacement))


def _kl_ce(
    pipe: ActivationPipeline, run: torch.Tensor, tokens: torch.Tensor, clean: CleanBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(clean ‖ this run) per position ``[B, T]`` and the run's next-token CE ``[B, T-1]``.

    KL = term − (Σ_v p_v m_v − lse_m): lse_m in row chunks over the run's logits, Σ p m from wbar
    (affine logits) or as a dot over the vocabulary with p. ``run`` (:func:`_run`) may hold one
    context ``[1, T, ..]`` standing for every context of the batch (:func:`_zero_all_run`)."""
    lg = run.float() if clean.p is not None else pipe.model.logits_from_normed(run)
    b, t = clean.term.shape
    lse = torch.empty(lg.shape[:2], dtype=lg.dtype, device=lg.device)
    for j in range(lg.shape[0]):
        for i in range(0, t, ROW_CHUNK):
            lse[j, i : i + ROW_CHUNK] = torch.logsumexp(lg[j, i : i + ROW_CHUNK], -1)
    if clean.p is None:
        dot = _dot(run, clean.wbar) + clean.pb
    else:
        dot = torch.empty(b, t, dtype=lg.dtype, device=lg.device)
        for j in range(b):
            rows = lg[j if lg.shape[0] > 1 else 0]
            for i in range(0, t, ROW_CHUNK):
                dot[j, i : i + ROW_CHUNK] = torch.linalg.vecdot(clean.p[j, i : i + ROW_CHUNK], rows[i : i + ROW_CHUNK])
    lse = lse.expand(b, t)
    kl = (clean.term - (dot - lse.to(dot.dtype))).clamp_min(0.0)  # >= 0 up to float noise
    return kl, _next_token_ce(lg.expand(b, -1, -1), lse, tokens)


def _zero_all_run(
    pipe: ActivationPipeline, n_pos: int, dtype: torch.dtype, affine: Any, target: SpliceTarget
) -> torch.Tensor | None:
    """The zero ablation at a residual hook as one context ``[1, T, ..]`` (:func:`_run`), or None at
    any other hook.

    Zeroing the residual stream at every position leaves the suffix nothing that depends on the
    tokens: its only input is the (zero) state, and positions enter through rotary or ALiBi terms that
    are the same for every context of length T (no padding mask: our contexts hold none). So one
    context's suffix is every context's, exactly (tests/test_models_families.py checks it against the
    per-batch suffix); this saves one whole suffix per batch on a cold run. At a hook inside a block
    the state still carries the tokens, and the baseline runs per batch."""
    if not target.site.is_resid:
        return None
    zeros = torch.zeros(1, n_pos, pipe.target_width(target), dtype=dtype, device=pipe.model.device)
    return _run(pipe, zeros, zeros, affine, target.site)


def _next_token_ce(lg: torch.Tensor, lse: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CE of the predictions at p = 0..T-2 of token p+1 (float64 ``[B, T-1]``) from logits and their lse."""
    target = lg[:, :-1].gather(-1, tokens[:, 1:].to(lg.device).unsqueeze(-1)).squeeze(-1)
    return (lse[:, :-1] - target).double()


def _seq_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values.double() * mask.double()).sum(-1).cpu()


def splice_stats(
    pipe: ActivationPipeline, saes: dict[str, Any], ablations: tuple[str, ...] | list[str] = DEFAULT_ABLATIONS
) -> dict[str, SpliceStats]:
    """Reconstruction, sparsity and spliced-loss sums per context for every SAE in one batched loop,
    with the ablation baselines ``ablations`` (``zero_all`` always; see the module doc).

    Transcoders (:mod:`saebench.transcoder`) are grouped by their output hook: one loop per output
    hook, where the reconstruction statistics compare the prediction with the output activation, the
    splice and the ablation baselines replace the output hook, and the latents (L0, firing) come from
    the input. SAEs (output hook = the pipeline's) run exactly the loop they always did."""
    unknown = sorted(set(ablations) - set(ABLATIONS))
    if unknown:
        raise SaebenchError(f"unknown ablation baseline(s) {', '.join(unknown)}; known: {', '.join(ABLATIONS)}")
    wanted = [a for a in ABLATIONS if a == "zero_all" or a in ablations]
    groups: dict[str, tuple[SpliceTarget, dict[str, Any]]] = {}
    for label, sae in saes.items():
        pipe.check_sae(sae, label)
        target = pipe.target(sae, label)
        groups.setdefault(target.hook, (target, {}))[1][label] = sae
    out: dict[str, SpliceStats] = {}
    for target, members in groups.values():
        out.update(_splice_target(pipe, members, wanted, target))
    return {label: out[label] for label in saes}


def _splice_target(
    pipe: ActivationPipeline, saes: dict[str, Any], wanted: list[str], target: SpliceTarget
) -> dict[str, SpliceStats]:
    """:func:`splice_stats` for the SAEs that write ``target``."""
    states, toks = pipe.states(), pipe.tokens.tokens
    n_seq, d = toks.shape[0], pipe.target_width(target)
    dev = pipe.model.device
    ablation = {a: found for a in wanted if (found := _cached_ablation(pipe, a, target)) is not None}
    missing = [a for a in wanted if a not in ablation]
    mean = pipe.target_mean(target) if "mean_kept" in missing else None
    new_ablation: dict[str, dict[str, list[torch.Tensor]]] = {a: {} for a in missing}
    cols = {k: {c: torch.zeros(n_seq, dtype=torch.float64) for c in REC_COLUMNS + LOSS_COLUMNS} for k in saes}
    sum_x = torch.zeros(n_seq, d, dtype=torch.float64)
    fire = {k: torch.zeros(int(s.d_sae), dtype=torch.int64) for k, s in saes.items()}
    by_seq = {
        k: torch.zeros(n_seq, int(s.d_sae), dtype=torch.int32)
        for k, s in saes.items()
        if n_seq * int(s.d_sae) <= FIRE_BY_SEQ_MAX
    }
    clean_s, abl_s, sae_s = 0.0, 0.0, dict.fromkeys(saes, 0.0)
    affine = pipe.model.affine_unembed()
    side = pipe.shared("clean_side", lambda: _clean_side(pipe, affine)) if affine is not None else None
    p_buf: torch.Tensor | None = None  # clean probabilities [B, T, V] (soft-capped logits), one buffer
    zero_run = _zero_all_run(pipe, toks.shape[1], states.dtype, affine, target) if "zero_all" in missing else None
    for s in pipe.batch_starts(f"clean + spliced ({len(saes)} SAE)" if side is None else f"spliced ({len(saes)} SAE)"):
        t0 = time.perf_counter()
        sl = slice(s, s + pipe.batch_size)
        st = states[sl].to(dev)
        tok = toks[sl]
        special = special_mask(tok, pipe.model.bos_id).to(dev)
        keep = ~special
        keep_ce = keep[:, :-1]
        x_in, acts = pipe.target_acts(st, target)  # the SAE's input, the activation its output replaces
        if side is not None:
            wbar, small = side
            cols_ = {k: v[sl].to(dev) for k, v in small.items()}
            clean = CleanBatch(cols_["clean_term"], cols_["ce_clean"], wbar=wbar[sl].to(dev), pb=cols_["pb"])
        else:
            clean, p_buf = _clean_batch(pipe, st, tok, affine, p_buf)
            pipe.counters.clean_suffix_batches += 1
        ce_clean = clean.ce

        x_kept = acts[keep]  # [N, d] in row-major (context, position) order
        in_kept = x_kept if target.is_input else x_in[keep]
        rows = keep.nonzero()[:, 0].cpu()
        xd = x_kept.double()
        sum_x[sl].index_add_(0, rows, xd.cpu())
        x_norm = xd.norm(dim=-1)
        clean_s += time.perf_counter() - t0
        if missing:
            t1 = time.perf_counter()
            for name in missing:
                if name == "zero_all" and zero_run is not None:
                    kl, ce = _kl_ce(pipe, zero_run, tok, clean)
                    new_ablation[name].setdefault("ce_zero_all", []).append(ce.cpu())
                    new_ablation[name].setdefault("kl_zero_all", []).append(kl.double().cpu())
                    continue
                rep = torch.zeros_like(acts)
                if name != "zero_all":
                    rep[special] = acts[special]
                    if name == "mean_kept":
                        rep[keep] = mean.to(acts.dtype).to(dev)
                kl, ce = _kl_ce(pipe, _run(pipe, st, rep, affine, target.site), tok, clean)
                new_ablation[name].setdefault(f"ce_{name}", []).append(ce.cpu())
                if name == "zero_all":
                    new_ablation[name].setdefault("kl_zero_all", []).append(kl.double().cpu())
                pipe.counters.ablation_batches += 1
            abl_s += time.perf_counter() - t1
        for label, sae in saes.items():
            t1 = time.perf_counter()
            with torch.no_grad():
                z = sae.encode(in_kept)
                xhat = reconstruct(sae, in_kept, z)
            if tuple(xhat.shape) != tuple(x_kept.shape) or z.shape[-1] != int(sae.d_sae):
                raise SaebenchError(
                    f"SAE {label}: encode/decode gave shapes {list(z.shape)} / {list(xhat.shape)} "
                    f"for input {list(in_kept.shape)}; decode(encode(x)) must have the shape of "
                    + ("x" if target.is_input else f"the output hook {target.hook}, {list(x_kept.shape)}")
                )
            if not bool(torch.isfinite(xhat).all()):
                raise SaebenchError(f"SAE {label} produced NaN/Inf reconstructions; check its weights")
            spliced = acts.clone()
            spliced[keep] = xhat.to(acts.dtype)
            kl, ce_spliced = _kl_ce(pipe, _run(pipe, st, spliced, affine, target.site), tok, clean)
            pipe.counters.spliced_suffix_batches += 1
            xh = xhat.double()
            xh_norm = xh.norm(dim=-1)
            dot = (xd * xh).sum(-1)
            denom = x_norm * xh_norm
            ratio_in = torch.where(x_norm < 1e-4, torch.ones_like(x_norm), x_norm)  # SAEBench's guard
            active = z != 0
            per_token = {
                "n_rec": torch.ones_like(x_norm),
                "sq_err": ((xd - xh) ** 2).sum(-1),
                "x_sq": x_norm**2,
                "cos": torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.zeros_like(dot)),
                "l2_in": x_norm,
                "l2_out": xh_norm,
                "l2_ratio": xh_norm / ratio_in,
                "xhat_sq": xh_norm**2,
                "dot": dot,
                "l0": (z != 0).sum(-1).double(),
                "l1": z.double().sum(-1),
            }
            c = cols[label]
            for name, v in per_token.items():
                c[name][sl].index_add_(0, rows, v.cpu())
            c["n_ce"][sl] += _seq_sum(torch.ones_like(ce_clean), keep_ce)
            c["ce_clean"][sl] += _seq_sum(ce_clean, keep_ce)
            c["ce_spliced"][sl] += _seq_sum(ce_spliced, keep_ce)
            c["n_kl"][sl] += _seq_sum(torch.ones_like(kl), keep)
            c["kl_spliced"][sl] += _seq_sum(kl, keep)
            fire[label] += active.sum(0).cpu()
            if label in by_seq:
                by_seq[label][sl].index_add_(0, rows, active.to(torch.int32).cpu())
            del z, xhat, spliced
            sae_s[label] += time.perf_counter() - t1
    if side is None:
        pipe.timing["clean_suffix_s"] = pipe.timing.get("clean_suffix_s", 0.0) + clean_s
    for name, parts in new_ablation.items():
        ablation[name] = _store(
            pipe, "ablation", _ablation_name(name, target), {k: torch.cat(v) for k, v in parts.items()}
        )
    if missing:
        pipe.timing["ablation_s"] = pipe.timing.get("ablation_s", 0.0) + abl_s
    keep_ce_all = ~special_mask(toks, pipe.model.bos_id)[:, :-1]
    keep_all = ~special_mask(toks, pipe.model.bos_id)
    abl_cols = {f"ce_{n}": _seq_sum(ablation[n][f"ce_{n}"], keep_ce_all) for n in wanted}
    abl_cols["kl_zero_all"] = _seq_sum(ablation["zero_all"]["kl_zero_all"], keep_all)
    seq_ids = pipe.tokens.seq_ids()
    return {
        label: SpliceStats(
            {**cols[label], **abl_cols},
            sum_x,
            fire[label],
            by_seq.get(label),
            seq_ids,
            timing={"spliced_s": sae_s[label]},
            doc_ids=pipe.tokens.doc_ids,
        )
        for label in saes
    }


def _ablation_columns(name: str) -> set[str]:
    return {f"ce_{name}", "kl_zero_all"} if name == "zero_all" else {f"ce_{name}"}


def _cached(pipe: ActivationPipeline, what: str, name: str, columns: set[str]) -> dict[str, torch.Tensor] | None:
    """Entry ``what`` / ``name`` (an ablation baseline, or the clean side) from this pipeline's memo or
    the disk cache, or None when it still has to be computed (one cache entry per baseline: asking
    for a variant later adds its entry)."""
    memo = pipe.memo.get(f"{what}:{name}")
    if memo is not None:
        return memo
    if not pipe.use_cache:
        return None
    t0 = time.perf_counter()
    key = pipe.cache_key(what, name, pipe.tokens.fingerprint())
    found = pipe.load_cached(what, key, label=name)
    n = pipe.tokens.tokens.shape[0]
    if found is None or set(found) != columns or any(v.shape[0] != n for v in found.values()):
        return None
    pipe.add_time(f"{what}_cached_s", t0)
    pipe.memo[f"{what}:{name}"] = found
    return found


def _ablation_name(name: str, target: SpliceTarget) -> str:
    """The cache name of ablation baseline ``name`` at ``target``: ``name`` at the pipeline's hook (the
    entries SAEs have always used), ``name@<output hook>`` for a transcoder's output hook."""
    return name if target.is_input else f"{name}@{target.hook}"


def _cached_ablation(pipe: ActivationPipeline, name: str, target: SpliceTarget) -> dict[str, torch.Tensor] | None:
    return _cached(pipe, "ablation", _ablation_name(name, target), _ablation_columns(name))


def _store(pipe: ActivationPipeline, what: str, name: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    pipe.memo[f"{what}:{name}"] = tensors
    if pipe.use_cache:
        pipe.save_cached(what, pipe.cache_key(what, name, pipe.tokens.fingerprint()), tensors, label=name)
    return tensors
