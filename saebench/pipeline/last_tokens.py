"""Hook activation at the last token of each example (``--evals sae_probes`` and any last-token task).

The same model pass as :mod:`saebench.pipeline.tasks` (each text tokenized without special
tokens, left-truncated to its last ``max_tokens - 1`` tokens, BOS prepended, sorted by length and
right-padded per batch: exact for causal models), but only the last real token's activation is
kept: ``[n_examples, d]`` instead of every token. Kantamneni et al. 2025 probe the last token,
and their 113 datasets hold ~10^5 texts, whose every-token activations would not fit in memory or
on disk. Entries are cached per (model, hook, dtype, texts, max_tokens); model calls count as
``task_forward_batches``.
"""

from __future__ import annotations

import hashlib
import time

import torch

from saebench.errors import SaebenchError
from saebench.pipeline.states import ActivationPipeline, padded_batches


def last_token_activations(
    pipe: ActivationPipeline, tasks: dict[str, list[str]], max_tokens: int
) -> dict[str, torch.Tensor]:
    """``{name: [n_texts, d]}`` hook activations at each text's last token, computed once and cached."""
    if max_tokens < 2:
        raise SaebenchError(f"max_tokens {max_tokens} is too short; use at least 2 (BOS + one token)")
    out: dict[str, torch.Tensor] = {}
    for name, texts in tasks.items():
        text_hash = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]
        key = pipe.cache_key("tasklast", text_hash, str(max_tokens))
        out[name] = pipe.shared(
            f"tasklast:{key}", lambda texts=texts, key=key, name=name: _one(pipe, texts, max_tokens, key, name)
        )
    return out


def _one(pipe: ActivationPipeline, texts: list[str], max_tokens: int, key: str, name: str) -> torch.Tensor:
    t0 = time.perf_counter()

    def compute() -> dict[str, torch.Tensor]:
        return {"last": _pass(pipe, texts, max_tokens)}

    found, cached = pipe.cached_tensors(
        "tasklast", key, compute, valid=lambda t: t["last"].shape[0] == len(texts), label=name
    )
    stage = "tasklast_cached_s" if cached else "tasklast_forward_s"
    pipe.timing[stage] = pipe.timing.get(stage, 0.0) + time.perf_counter() - t0
    return found["last"]


def _pass(pipe: ActivationPipeline, texts: list[str], max_tokens: int) -> torch.Tensor:
    model = pipe.model
    ids = [[model.bos_id, *(model.tokenize(t)[-(max_tokens - 1) :] or [model.bos_id])] for t in texts]
    budget = max(pipe.batch_size * pipe.tokens.ctx_len, max_tokens)
    out: torch.Tensor | None = None
    for take, batch, lengths in padded_batches(ids, model.bos_id, budget):
        acts = pipe.acts_batch(model.prefix(batch, pipe.site))
        pipe.counters.task_forward_batches += 1
        last = acts[torch.arange(len(take), device=acts.device), (lengths - 1).to(acts.device)].cpu()
        if out is None:
            out = torch.zeros(len(ids), last.shape[-1], dtype=last.dtype)
        out[torch.as_tensor(take)] = last
    assert out is not None
    return out
