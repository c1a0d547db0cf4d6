"""Hook activations of probing-task examples (``--evals probing`` and any task-based evaluator).

Each text is tokenized without special tokens, left-truncated to its last ``max_tokens - 1``
tokens (labels of QA and compound-word tasks are decided at the end) and prefixed with the
model's BOS. Examples are sorted by length and right-padded per batch (exact for causal models:
real tokens never attend to later pads) within a budget of ``batch_size x ctx_len`` tokens. Only
the non-BOS, non-pad tokens are kept, so any pooling (mean, last) can be applied later without
another pass. Entries are keyed per task by (model, hook, dtype, texts, max_tokens): a second SAE
at this hook, in this run or a later one, costs no model pass.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from saebench.errors import SaebenchError
from saebench.pipeline.states import ActivationPipeline, padded_batches


@dataclass
class TaskActs:
    """Hook activations of one task's examples.

    ``acts`` is ``[n_tokens, d]``: every example's non-BOS tokens, examples in order, no padding;
    ``lengths[i]`` is example i's token count (so ``offsets = cumsum(lengths) - lengths``).
    ``key`` identifies (model, hook, texts, max_tokens); ``cached`` says it came from disk.
    """

    acts: torch.Tensor
    lengths: torch.Tensor
    key: str
    cached: bool = False


def task_activations(pipe: ActivationPipeline, tasks: dict[str, list[str]], max_tokens: int) -> dict[str, TaskActs]:
    """Hook activations for each task's example texts, computed once and cached (see module doc)."""
    if max_tokens < 2:
        raise SaebenchError(f"probing max_tokens {max_tokens} is too short; use at least 2 (BOS + one token)")
    out: dict[str, TaskActs] = {}
    bar = tqdm(tasks.items(), desc=f"task activations at {pipe.hook}", unit="task", leave=False,
               disable=not pipe.progress or len(tasks) < 2)  # fmt: skip
    for name, texts in bar:
        text_hash = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]
        key = pipe.cache_key("task", text_hash, str(max_tokens))
        out[name] = pipe.shared(
            f"task:{key}", lambda texts=texts, key=key, name=name: _one_task(pipe, texts, max_tokens, key, name)
        )
    return out


def _one_task(pipe: ActivationPipeline, texts: list[str], max_tokens: int, key: str, name: str) -> TaskActs:
    t0 = time.perf_counter()

    def compute() -> dict[str, torch.Tensor]:
        acts, lengths = _task_pass(pipe, texts, max_tokens)
        return {"acts": acts, "lengths": lengths}

    found, cached = pipe.cached_tensors(
        "task", key, compute, valid=lambda t: t["lengths"].numel() == len(texts), label=name
    )
    pipe.add_time("task_cached_s" if cached else "task_forward_s", t0)
    return TaskActs(found["acts"], found["lengths"], key, cached=cached)


def _task_pass(pipe: ActivationPipeline, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    model = pipe.model
    ids = [[model.bos_id, *(model.tokenize(t)[-(max_tokens - 1) :] or [model.bos_id])] for t in texts]
    budget = max(pipe.batch_size * pipe.tokens.ctx_len, max_tokens)
    per_example: list[torch.Tensor | None] = [None] * len(ids)
    for take, batch, _ in padded_batches(ids, model.bos_id, budget):
        acts = pipe.acts_batch(model.prefix(batch, pipe.site)).cpu()
        pipe.counters.task_forward_batches += 1
        for row, j in enumerate(take):
            per_example[j] = acts[row, 1 : len(ids[j])].clone()
    lengths = torch.tensor([len(t) - 1 for t in ids], dtype=torch.long)
    return torch.cat([a for a in per_example if a is not None]), lengths
