"""Hook activations of texts tokenized as SAEBench tokenizes them (``mode=saebench`` evaluators).

SAEBench 0.6.0 (``dataset_utils.tokenize_data_dictionary`` + ``activation_collection``) turns each
text into one row of exactly ``ctx`` tokens: the tokenizer's BOS, the text's *first* ``ctx - 1``
tokens, then padding; it runs rows through the model in batches of ``llm_batch_size`` in the order
given, one class key at a time, and zeroes the activation of every position holding the BOS, pad
or EOS id. :func:`row_activations` does the same with the shared model: the same rows, the same
batches (so the activations are the very numbers SAEBench's code computes on this model), and
keeps only the unmasked positions (``acts``) with the row mask (``mask [n, ctx]``), from which
:func:`saebench.probes.saebench_probes.pool_mean` rebuilds SAEBench's mean pool exactly.

The tokenizer handed to SAEBench is the model's with its BOS prepended (transformer-lens'
``set_tokenizer`` does that), so rows here are ``[model.bos_id] + tokenize(text)[: ctx - 1]``,
padded with the tokenizer's pad id (its EOS, else the BOS, where it has none), masked where the id
is the BOS, pad or EOS. Entries are memoised in the pipeline and cached on disk per (model, hook,
texts, ctx, batch size): a second SAE at the hook, in this run or a later one, costs no model pass.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch

from saebench.errors import SaebenchError
from saebench.pipeline.states import ActivationPipeline


@dataclass
class RowActs:
    """Activations of one key's texts: ``acts [mask.sum(), d]`` the kept positions row by row,
    ``mask [n, ctx]`` which positions were kept; ``key`` the cache key, ``cached`` from disk."""

    acts: torch.Tensor
    mask: torch.Tensor
    key: str
    cached: bool = False

    @property
    def lengths(self) -> torch.Tensor:
        """Kept tokens per text."""
        return self.mask.sum(dim=1)

    @property
    def n_masked(self) -> torch.Tensor:
        """Masked positions per text (BOS, padding, EOS): SAEBench still encodes and ablates them."""
        return self.mask.shape[1] - self.lengths


def special_ids(pipe: ActivationPipeline) -> tuple[int, set[int]]:
    """``(pad id, masked ids)`` of the model's tokenizer as SAEBench sees it."""
    tok = pipe.model.tokenizer
    bos = int(pipe.model.bos_id)
    eos = getattr(tok, "eos_token_id", None)
    pad = getattr(tok, "pad_token_id", None)
    pad = pad if pad is not None else eos if eos is not None else bos
    return int(pad), {bos, int(pad)} | ({int(eos)} if eos is not None else set())


def tokenize_rows(pipe: ActivationPipeline, texts: list[str], ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([n, ctx] token ids, [n, ctx] kept mask)`` as SAEBench's tokenization (module doc)."""
    if ctx < 2:
        raise SaebenchError(f"context_length {ctx} is too short; SAEBench uses 128 (BOS + 127 tokens)")
    pad, masked = special_ids(pipe)
    rows = torch.full((len(texts), ctx), pad, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [pipe.model.bos_id, *pipe.model.tokenize(t)[: ctx - 1]]
        rows[i, : len(ids)] = torch.as_tensor(ids)
    keep = torch.ones_like(rows, dtype=torch.bool)
    for m in masked:
        keep &= rows != m
    return rows, keep


def row_activations(
    pipe: ActivationPipeline, texts_by_key: dict[str, list[str]], ctx: int, llm_batch_size: int, label: str
) -> dict[str, RowActs]:
    """Activations of every key's texts (module doc), computed once and cached."""
    if llm_batch_size < 1:
        raise SaebenchError(f"llm_batch_size {llm_batch_size} must be at least 1")
    out: dict[str, RowActs] = {}
    for key, texts in texts_by_key.items():
        h = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]
        ck = pipe.cache_key("saebench-rows", h, str(ctx), str(llm_batch_size))
        name = f"{label}-{key}"
        out[key] = pipe.shared(
            f"saebench-rows:{ck}",
            lambda texts=texts, ck=ck, name=name: _load(pipe, texts, ctx, llm_batch_size, ck, name),
        )
    return out


def _load(pipe: ActivationPipeline, texts: list[str], ctx: int, bs: int, key: str, name: str) -> RowActs:
    t0 = time.perf_counter()

    def compute() -> dict[str, torch.Tensor]:
        acts, mask = _pass(pipe, texts, ctx, bs)
        return {"acts": acts, "mask": mask}

    found, cached = pipe.cached_tensors(
        "saebench-rows", key, compute, valid=lambda t: t["mask"].shape == (len(texts), ctx), label=name[:40]
    )
    pipe.add_time("task_cached_s" if cached else "task_forward_s", t0)
    return RowActs(found["acts"], found["mask"], key, cached)


@torch.no_grad()
def _pass(pipe: ActivationPipeline, texts: list[str], ctx: int, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, keep = tokenize_rows(pipe, texts, ctx)
    empty = torch.nonzero(keep.sum(dim=1) == 0).flatten().tolist()
    if empty:
        raise SaebenchError(
            f"text {empty[0]} ({texts[empty[0]][:40]!r}) has no token left after masking BOS/pad/EOS; SAEBench would "
            "divide by zero there: remove empty texts from the data"
        )
    parts = []
    for s in range(0, len(texts), bs):
        acts = pipe.acts_batch(pipe.model.prefix(rows[s : s + bs], pipe.site)).float().cpu()
        pipe.counters.task_forward_batches += 1
        parts.append(acts[keep[s : s + bs]])
    if not parts:
        raise SaebenchError("saebench rows: no texts to run; the dataset split is empty")
    return torch.cat(parts), keep


def prompt_activations(
    pipe: ActivationPipeline, texts: list[str], position: int, batch_rows: int, label: str
) -> torch.Tensor:
    """``[R, d]``: the hook activation at ``position`` (from the end) of each prompt, as SAEBench's
    ``model.run_with_cache(prompts)[:, position]`` reads it: rows are ``[BOS] + tokenize(text)``,
    run ``batch_rows`` at a time in order, right-padded with the pad id to the longest row of
    their batch, and read at ``width + position`` of the padded batch (a shorter row is read
    where SAEBench reads it, padding included). Memoised and cached on disk like the other passes."""
    if position >= 0:
        raise SaebenchError(f"prompt_token_pos {position} must count from the end (SAEBench: -6)")
    h = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]
    key = pipe.cache_key("saebench-prompts", h, str(position), str(batch_rows))

    def load() -> torch.Tensor:
        t0 = time.perf_counter()

        def compute() -> dict[str, torch.Tensor]:
            return {"acts": _prompt_pass(pipe, texts, position, batch_rows)}

        found, cached = pipe.cached_tensors(
            "saebench-prompts", key, compute, valid=lambda t: t["acts"].shape[0] == len(texts), label=label
        )
        pipe.add_time("positions_cached_s" if cached else "positions_forward_s", t0)
        return found["acts"]

    return pipe.shared(f"saebench-prompts:{key}", load)


@torch.no_grad()
def _prompt_pass(pipe: ActivationPipeline, texts: list[str], position: int, batch_rows: int) -> torch.Tensor:
    pad, _ = special_ids(pipe)
    out: torch.Tensor | None = None
    for s in range(0, len(texts), batch_rows):
        rows = [[pipe.model.bos_id, *pipe.model.tokenize(t)] for t in texts[s : s + batch_rows]]
        width = max(len(r) for r in rows)
        if width + position < 0:
            raise SaebenchError(f"a prompt has {width} tokens, fewer than prompt_token_pos {position} reaches back")
        batch = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            batch[i, : len(r)] = torch.as_tensor(r)
        acts = pipe.acts_batch(pipe.model.prefix(batch, pipe.site))[:, width + position].float().cpu()
        if out is None:
            out = torch.zeros(len(texts), acts.shape[-1])
        out[s : s + len(rows)] = acts
        pipe.counters.position_forward_batches += 1
        pipe.counters.position_rows += len(rows)
    if out is None:
        raise SaebenchError("no prompts to run")
    return out
