"""Interchange interventions on prompt rows (``--evals ravel``): states, greedy answers, patched logits.

A prompt task (RAVEL) asks the model a question (``<BOS>Paris is a city in the country of``) and
reads its greedy answer, either as it is or with the residual stream at one position (the
entity's last token) overwritten by another vector (an SAE reconstruction mixing two prompts'
latents). Three passes, all on right-padded batches (exact for causal models):

- :func:`greedy` — greedy continuation of each row for up to ``n_new`` tokens, with an optional
  replacement vector per row written at its position on every step (the whole row is rerun
  each step: causal, so the replaced position sees the same prefix; this equals generating
  with a KV cache filled by the intervened first pass). A row stops as soon as ``decided``
  returns a verdict for its text so far. The first step's prefix states (each row's ``[len, d]``
  up to the hook: SAE-independent) can be kept, so the prompts need no further prefix pass;
- :func:`patched_logits` — last-token logits of a batch of rows from their stored states with
  the replacement at each row's position, differentiable in the replacement (mask training).

``PassCounters.position_forward_batches`` / ``position_rows`` count the model calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from saebench.errors import SaebenchError
from saebench.pipeline.states import ActivationPipeline, padded_batches


def _check_resid(pipe: ActivationPipeline) -> None:
    if not pipe.site.is_resid:
        raise SaebenchError(
            f"hook {pipe.hook} is not a residual-stream hook; interchange interventions need hook_resid_pre or "
            "hook_resid_post (pass an SAE trained there)"
        )


def _budget(pipe: ActivationPipeline, rows: Sequence[Sequence[int]]) -> int:
    return max(pipe.batch_size * pipe.tokens.ctx_len, max((len(r) for r in rows), default=1))


@torch.no_grad()
def greedy(
    pipe: ActivationPipeline,
    rows: Sequence[Sequence[int]],
    n_new: int,
    decided: Callable[[int, str], bool | None],
    positions: Sequence[int] | None = None,
    replacements: torch.Tensor | None = None,
    first_states: list[torch.Tensor | None] | None = None,
) -> tuple[list[list[int]], list[bool | None]]:
    """Greedy continuations of ``rows`` (up to ``n_new`` tokens each), the residual at
    ``positions[r]`` replaced by ``replacements[r]`` on every step when given. ``decided(r, text)``
    is asked after each token with the decoded continuation; a row stops at its first verdict.
    Returns the generated ids per row and each row's verdict (None: undecided after ``n_new``).
    ``first_states`` (a list of ``len(rows)`` Nones) receives each row's prefix state ``[len, d]``
    (float32, CPU) from the first step."""
    _check_resid(pipe)
    model = pipe.model
    gen: list[list[int]] = [[] for _ in rows]
    verdict: list[bool | None] = [None] * len(rows)
    live = list(range(len(rows)))
    budget = _budget(pipe, rows) + n_new * 8
    t0 = time.perf_counter()
    for step in range(n_new):
        if not live:
            break
        cur = [list(rows[r]) + gen[r] for r in live]
        for take, batch, lengths in padded_batches(cur, model.bos_id, budget):
            state = model.prefix(batch, pipe.site)
            idx = [live[j] for j in take]
            if step == 0 and first_states is not None:
                for j, r in enumerate(idx):
                    first_states[r] = state[j, : int(lengths[j])].float().cpu().clone()
            if replacements is not None and positions is not None:
                pos = torch.tensor([positions[r] for r in idx])
                logits = model.last_logits(state, pipe.site, lengths, pos, replacements[idx])
            else:
                logits = model.last_logits(state, pipe.site, lengths)
            nxt = logits.argmax(-1).tolist()
            for r, t in zip(idx, nxt, strict=True):
                gen[r].append(int(t))
            pipe.counters.position_forward_batches += 1
            pipe.counters.position_rows += len(take)
        still = []
        for r in live:
            verdict[r] = decided(r, model.tokenizer.decode(gen[r]))
            if verdict[r] is None:
                still.append(r)
        live = still
    pipe.add_time("ravel_greedy_s", t0)
    return gen, verdict


def patched_logits(
    pipe: ActivationPipeline,
    states: Sequence[torch.Tensor],
    positions: Sequence[int],
    vectors: torch.Tensor,
) -> torch.Tensor:
    """Last-token logits ``[B, V]`` of rows given by their prefix ``states`` with ``vectors[b]``
    written at ``positions[b]``; differentiable in ``vectors`` (no ``no_grad``)."""
    _check_resid(pipe)
    width = max(int(s.shape[0]) for s in states)
    d = int(states[0].shape[-1])
    batch = torch.zeros(len(states), width, d, dtype=pipe.model.dtype, device=pipe.model.device)
    for j, s in enumerate(states):
        batch[j, : s.shape[0]] = s.to(device=batch.device, dtype=batch.dtype)
    lengths = torch.tensor([int(s.shape[0]) for s in states])
    pipe.counters.position_forward_batches += 1
    pipe.counters.position_rows += len(states)
    return pipe.model.last_logits(batch, pipe.site, lengths, torch.tensor(list(positions)), vectors)
