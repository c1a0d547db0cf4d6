"""Examples per latent from the evaluation token set: firing counts, top / random /
importance-sampled positions with windows, uniform draws among active (position, latent) pairs, and
activations at the end of edited contexts.

Everything here reads the cached prefix states (``ActivationPipeline.states``): collecting
examples costs SAE encodes only (plus the hook's own block for a hook inside a block), never
another prefix pass, and never materialises a ``[tokens x d_sae]`` matrix. Used by n2g, ablation
and autointerp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from saebench.errors import SaebenchError
from saebench.pipeline.states import ActivationPipeline, padded_batches


@dataclass
class ExampleSet:
    """``k`` examples per latent for ``L`` latents (see :func:`latent_examples`).

    ``seq``/``pos`` index the token set (``pipeline.tokens.tokens[seq, pos]`` is the example's
    activating token), ``act`` is the latent's activation there; all ``[L, k]``, sorted by
    ``act`` descending within a latent. ``valid`` is False in the slots a latent could not fill
    (it fired on fewer than ``k`` positions; those slots hold seq = pos = -1, act = 0).
    ``tokens``/``acts`` are ``[L, k, left + 1 + right]`` windows around the activating token
    (token id -1 and activation 0 outside the context) when a window was requested.
    """

    seq: torch.Tensor
    pos: torch.Tensor
    act: torch.Tensor
    valid: torch.Tensor
    tokens: torch.Tensor | None = None
    acts: torch.Tensor | None = None


@dataclass
class LatentExamples:
    """Top-activating, random-activating and importance-sampled examples of a set of latents.

    ``latents`` ``[L]`` are SAE latent indices; ``n_fire`` ``[L]`` counts positions where each
    fired (activation > 0) among the scanned ones, ``max_act`` ``[L]`` its maximum there
    (0 for a latent that never fired). ``n_positions`` is the number of positions scanned.
    """

    latents: torch.Tensor
    top: ExampleSet
    random: ExampleSet
    importance: ExampleSet
    n_fire: torch.Tensor
    max_act: torch.Tensor
    n_positions: int
    window: tuple[int, int] | None = None


def fire_counts(pipe: ActivationPipeline, sae: Any, seqs: Any = None) -> torch.Tensor:
    """Positions (1..T-1 of the given contexts; all by default) where each latent fires, int64 ``[d_sae]``.

    One streamed encode pass: never more than ``batch_size x T x d_sae`` floats at once.
    """
    counts = torch.zeros(int(sae.d_sae), dtype=torch.int64)
    for _, z in pipe.encode_seqs(sae, seqs):
        counts += (z > 0).reshape(-1, z.shape[-1]).sum(0).cpu()
    return counts


def choose_latents(
    pipe: ActivationPipeline,
    sae: Any,
    explicit: list[int] | None,
    n: int,
    seed: int,
    what: str,
    seqs: Any = None,
    min_count: int = 1,
    density: tuple[float, float] | None = None,
    counts: torch.Tensor | None = None,
    stable: bool = False,
) -> tuple[torch.Tensor, int | None]:
    """The latents a per-latent evaluator studies, sorted, and how many were eligible.

    ``explicit`` (validated against ``d_sae``) wins; otherwise ``n`` latents firing on at least
    ``min_count`` positions of ``seqs`` (and, with ``density = (lo, hi)``, on a fraction of those
    positions within [lo, hi]) are drawn without replacement (seeded). The eligible count is
    None for an explicit list (no firing pass is spent on it). ``counts`` (from
    :func:`fire_counts` on the same ``seqs``) saves the firing pass when the caller has them.
    With ``stable``, every latent gets a seeded random key and the ``n`` eligible latents with the
    smallest keys are taken: a small change in who is eligible (another token sample) changes the
    draw by only those latents, instead of reshuffling it.
    """
    if explicit is not None:
        bad = [i for i in explicit if not 0 <= i < int(sae.d_sae)]
        if bad:
            raise SaebenchError(f"{what}.latents {bad} are outside 0..{int(sae.d_sae) - 1}; pass valid latent indices")
        return torch.tensor(sorted(set(explicit)), dtype=torch.long), None
    counts = fire_counts(pipe, sae, seqs) if counts is None else counts
    ok = counts >= max(1, min_count)
    if density is not None:
        n_pos = pipe.seq_index(seqs).numel() * (pipe.tokens.ctx_len - 1)
        freq = counts.double() / max(1, n_pos)
        ok &= (freq >= density[0]) & (freq <= density[1])
    live = ok.nonzero().squeeze(1)
    if stable:
        key = torch.rand(int(sae.d_sae), generator=torch.Generator().manual_seed(seed))
        order = live[key[live].argsort()]
        return order[:n].sort().values, int(live.numel())
    perm = torch.randperm(live.numel(), generator=torch.Generator().manual_seed(seed))
    return live[perm[:n]].sort().values, int(live.numel())


def active_pairs(
    pipe: ActivationPipeline,
    sae: Any,
    n: int,
    seed: int,
    positions: tuple[int, int] | None = None,
    latents: list[int] | None = None,
    seqs: Any = None,
) -> tuple[torch.Tensor, int]:
    """``n`` (context, position, latent) triples drawn uniformly without replacement among all
    *active* ones (z > 0) at positions ``lo..hi`` of contexts ``seqs``, int64 ``[m, 3]`` sorted,
    and the number of active triples there (m = min(n, that number)).

    Uniform over active pairs = tokens weighted by how many latents fire there and every active
    latent of a sampled token equally likely: the estimand of "ablate every active latent at
    sampled tokens" (Gao et al. 2024, sec. 4.5). ``latents`` restricts the population to those
    latents. One streamed encode pass; each active entry of context s gets a uniform key from a
    generator seeded by (``seed``, s) and the ``n`` largest keys are kept (bottom-k sampling), so
    the draw does not depend on ``batch_size``.
    """
    ctx = pipe.tokens.ctx_len
    lo, hi = positions if positions is not None else (1, ctx - 1)
    lo, hi = max(1, int(lo)), min(ctx - 1, int(hi))
    if hi < lo:
        raise SaebenchError(f"no position to sample in {lo}..{hi} of {ctx}-token contexts; raise --ctx-len")
    allowed = None
    if latents is not None:
        bad = [i for i in latents if not 0 <= i < int(sae.d_sae)]
        if bad:
            raise SaebenchError(f"latents {bad} are outside 0..{int(sae.d_sae) - 1}; pass valid latent indices")
        allowed = torch.zeros(int(sae.d_sae), dtype=torch.bool)
        allowed[torch.tensor(latents, dtype=torch.long)] = True
    keys = torch.empty(0, dtype=torch.float64)
    trip = torch.empty(0, 3, dtype=torch.long)
    total = 0
    for idx, z in pipe.encode_seqs(sae, seqs):
        a = z[:, lo - 1 : hi].float().cpu()  # [b, P, d_sae]: a[:, j] is position lo + j
        fire = a > 0
        if allowed is not None:
            fire &= allowed
        for i, s in enumerate(idx.tolist()):
            nz = fire[i].nonzero()  # [m, 2] (position offset, latent), row-major
            if nz.numel() == 0:
                continue
            total += nz.shape[0]
            g = torch.Generator().manual_seed(seed * 1_000_003 + int(s) + 7)
            k = torch.rand(nz.shape[0], dtype=torch.float64, generator=g)
            t = torch.cat([torch.full((nz.shape[0], 1), int(s)), nz[:, :1] + lo, nz[:, 1:]], dim=1)
            keys, trip = torch.cat([keys, k]), torch.cat([trip, t])
            if keys.numel() > n:
                top = keys.topk(n).indices
                keys, trip = keys[top], trip[top]
    if trip.numel():
        order = torch.tensor(sorted(range(trip.shape[0]), key=lambda r: tuple(trip[r].tolist())))
        trip = trip[order]
    return trip, total


def latent_acts(pipe: ActivationPipeline, sae: Any, latents: Any, seqs: Any = None) -> torch.Tensor:
    """Per-token activations of a few latents on whole contexts, float32 ``[n_seq, T, L]``.

    Position 0 (BOS) is never encoded and reads 0. Dense only in the L selected latents.
    """
    lat = torch.as_tensor(latents, dtype=torch.long).reshape(-1)
    idx = pipe.seq_index(seqs)
    out = torch.zeros(idx.numel(), pipe.tokens.ctx_len, lat.numel(), dtype=torch.float32)
    row = 0
    for b_idx, z in pipe.encode_seqs(sae, idx):
        out[row : row + b_idx.numel(), 1:] = z[..., lat.to(z.device)].float().cpu()
        row += b_idx.numel()
    return out


def latent_examples(
    pipe: ActivationPipeline,
    sae: Any,
    latents: Any,
    n_top: int = 0,
    n_random: int = 0,
    n_importance: int = 0,
    seed: int = 0,
    seqs: Any = None,
    positions: tuple[int, int] | None = None,
    window: tuple[int, int] | None = None,
) -> LatentExamples:
    """Top-activating, random-activating and importance-sampled examples of ``latents``, streamed.

    One encode pass over the cached prefix states of contexts ``seqs`` (default: all),
    scanning positions ``positions = (lo, hi)`` inclusive (default ``(1, T-1)``; position 0,
    the BOS, is never a candidate). Per latent, and per batch, the candidates are merged into
    a bounded buffer with ``topk`` over ``k + batch positions`` rows: memory is
    O(batch x T x d_sae) for the encode plus O(k x L) for the buffers, never
    ``[tokens x d_sae]``.

    - ``top``: the ``n_top`` largest activations (ties: first seen).
    - ``random``: ``n_random`` positions drawn uniformly without replacement among those where
      the latent fires (activation > 0): each candidate gets a uniform key u, the largest
      keys are kept (bottom-k / reservoir sampling).
    - ``importance``: ``n_importance`` positions drawn without replacement with probability
      proportional to the activation (Efraimidis & Spirakis 2006: keep the largest
      u^(1/a), i.e. log(u)/a), so weak activations are represented in proportion to their
      mass across the activation range (the example mix autointerp scorers want).

    Keys come from ``torch.Generator`` seeded per context (``seed``, context index), so the
    sample does not depend on ``batch_size``. With ``window = (left, right)`` each example
    also gets its tokens and this latent's per-token activations at positions
    ``pos - left .. pos + right`` (second encode pass over only the contexts used).
    """
    lat = torch.as_tensor(latents, dtype=torch.long).reshape(-1)
    n_lat, ctx = lat.numel(), pipe.tokens.ctx_len
    lo, hi = positions if positions is not None else (1, ctx - 1)
    lo, hi = max(1, int(lo)), min(ctx - 1, int(hi))
    if hi < lo:
        raise SaebenchError(f"no position to scan in {lo}..{hi} of {ctx}-token contexts; raise --ctx-len")
    sizes = {"top": n_top, "random": n_random, "importance": n_importance}
    neg = float("-inf")
    buf = {
        name: (
            torch.empty(0, n_lat, dtype=torch.float64),
            torch.empty(0, n_lat),
            torch.empty(0, n_lat, dtype=torch.long),
            torch.empty(0, n_lat, dtype=torch.long),
        )
        for name, k in sizes.items()
        if k > 0
    }
    n_fire = torch.zeros(n_lat, dtype=torch.int64)
    max_act = torch.zeros(n_lat)
    n_pos = hi - lo + 1
    scanned = 0
    for idx, z in pipe.encode_seqs(sae, seqs):
        a3 = z[:, lo - 1 : hi][..., lat.to(z.device)].float().cpu()  # [b, P, L]
        b = a3.shape[0]
        a = a3.reshape(b * n_pos, n_lat)
        fire = a > 0
        scanned += b * n_pos
        n_fire += fire.sum(0)
        max_act = torch.maximum(max_act, a.max(0).values.clamp_min(0))
        seq_col = idx.repeat_interleave(n_pos)[:, None].expand(-1, n_lat)
        pos_col = torch.arange(lo, hi + 1).repeat(b)[:, None].expand(-1, n_lat)
        u = None
        if n_random or n_importance:
            u = torch.cat(
                [
                    torch.rand(
                        n_pos,
                        n_lat,
                        2,
                        dtype=torch.float64,
                        generator=torch.Generator().manual_seed(seed * 1_000_003 + int(s) + 1),
                    )
                    for s in idx
                ]
            ).clamp_min(1e-300)
        for name in buf:
            if name == "top":
                key = torch.where(fire, a.double(), neg)
            elif name == "random":
                key = torch.where(fire, u[..., 0], neg)
            else:
                key = torch.where(fire, u[..., 1].log() / a.double().clamp_min(1e-30), neg)
            keys, acts_b, seq_b, pos_b = buf[name]
            keys = torch.cat([keys, key])
            acts_b, seq_b, pos_b = torch.cat([acts_b, a]), torch.cat([seq_b, seq_col]), torch.cat([pos_b, pos_col])
            k = min(sizes[name], keys.shape[0])
            top = keys.topk(k, dim=0).indices
            buf[name] = (keys.gather(0, top), acts_b.gather(0, top), seq_b.gather(0, top), pos_b.gather(0, top))

    def finish(name: str) -> ExampleSet:
        if name not in buf:
            empty = torch.empty(n_lat, 0)
            return ExampleSet(empty.long(), empty.long(), empty, empty.bool())
        keys, acts_b, seq_b, pos_b = (t.T.contiguous() for t in buf[name])  # [L, k]
        valid = keys > neg
        order = torch.where(valid, acts_b, neg).argsort(dim=1, descending=True, stable=True)
        valid, acts_b = valid.gather(1, order), acts_b.gather(1, order)
        seq_b, pos_b = seq_b.gather(1, order), pos_b.gather(1, order)
        return ExampleSet(
            torch.where(valid, seq_b, -1), torch.where(valid, pos_b, -1), torch.where(valid, acts_b, 0.0), valid
        )

    out = LatentExamples(lat, finish("top"), finish("random"), finish("importance"), n_fire, max_act, scanned, window)
    if window is not None:
        _fill_windows(pipe, sae, out, window)
    return out


def _fill_windows(pipe: ActivationPipeline, sae: Any, ex: LatentExamples, window: tuple[int, int]) -> None:
    left, right = window
    sets = [es for es in (ex.top, ex.random, ex.importance) if es.valid.any()]
    if not sets:
        return
    used = torch.unique(torch.cat([es.seq[es.valid] for es in sets]))
    acts = latent_acts(pipe, sae, ex.latents, used)  # [U, T, L]
    where = {int(s): i for i, s in enumerate(used)}
    ctx, width = pipe.tokens.ctx_len, left + 1 + right
    for es in (ex.top, ex.random, ex.importance):
        n_lat, k = es.seq.shape
        es.tokens = torch.full((n_lat, k, width), -1, dtype=torch.long)
        es.acts = torch.zeros(n_lat, k, width)
        for li, j in es.valid.nonzero().tolist():
            s, p = int(es.seq[li, j]), int(es.pos[li, j])
            a, b = max(0, p - left), min(ctx, p + right + 1)
            off = a - (p - left)
            es.tokens[li, j, off : off + b - a] = pipe.tokens.tokens[s, a:b]
            es.acts[li, j, off : off + b - a] = acts[where[s], a:b, li]


@torch.no_grad()
def latent_acts_at(
    pipe: ActivationPipeline, sae: Any, rows: list[list[int]], latents: list[int], token_budget: int | None = None
) -> torch.Tensor:
    """Activation of latent ``latents[r]`` at the last token of token row ``rows[r]``, float32 ``[R]``.

    For explanation searches (n2g pruning and saliency): many short, edited contexts, each
    with its own latent. Rows run only up to the hook (``SubjectModel.prefix`` +
    ``hook_acts``), sorted by length and right-padded into batches of at most
    ``token_budget`` (default ``batch_size x ctx_len``) tokens; right padding is exact for
    causal models. Only the last position of each row is encoded. Callers put the BOS
    first themselves. ``pipe.counters.example_forward_batches``/``_rows`` count the model calls and rows.
    """
    if len(rows) != len(latents):
        raise SaebenchError(f"latent_acts_at got {len(rows)} rows but {len(latents)} latents; pass one latent per row")
    budget = token_budget or pipe.batch_size * pipe.tokens.ctx_len
    out = torch.zeros(len(rows))
    for take, batch, lengths in padded_batches(rows, pipe.model.bos_id, budget):
        acts = pipe.acts_batch(pipe.model.prefix(batch, pipe.site))
        x = acts[torch.arange(len(take), device=acts.device), (lengths - 1).to(acts.device)]
        z = sae.encode(x)
        lat = torch.tensor([latents[r] for r in take], device=z.device)
        out[take] = z.gather(1, lat[:, None]).squeeze(1).float().cpu()
        pipe.counters.example_forward_batches += 1
        pipe.counters.example_forward_rows += len(take)
    return out
