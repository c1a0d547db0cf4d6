"""Hook activations at chosen positions of given token rows (prompt tasks: ``--evals absorption``).

A prompt task builds its own token rows (e.g. in-context first-letter prompts) and needs the hook
activation at one position of each (the word being asked about). :func:`acts_at` runs the rows
only up to the hook (``SubjectModel.prefix`` + ``hook_acts``), longest first, right-padded into
batches of at most ``batch_size x ctx_len`` tokens (exact for causal models: real tokens never
attend to later pads), and keeps one ``[d]`` vector per row: never the whole ``[rows, T, d]``.

The result does not depend on any SAE: it is memoised in the pipeline and cached on disk, keyed
by (model, hook, dtype, the rows and positions), so every further SAE at the hook, in this run
or a later one, costs no model pass. ``PassCounters.position_forward_batches`` / ``position_rows``
count the model calls and rows spent (0 when a cache answered).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch

from saebench.errors import SaebenchError
from saebench.pipeline.states import ActivationPipeline, padded_batches


@dataclass
class PositionActs:
    """``acts[r]`` is the hook activation at ``positions[r]`` of row ``r`` (float32, CPU);
    ``key`` identifies (model, hook, dtype, rows, positions); ``cached`` says it came from disk."""

    acts: torch.Tensor
    key: str
    cached: bool = False


def rows_hash(rows: list[list[int]], positions: list[int]) -> str:
    """Content hash of token rows and their positions (part of the cache key and of sample ids)."""
    h = hashlib.sha256()
    for row, pos in zip(rows, positions, strict=True):
        h.update(f"{pos}:{','.join(map(str, row))};".encode())
    return h.hexdigest()[:16]


def acts_at(pipe: ActivationPipeline, rows: list[list[int]], positions: list[int], label: str = "rows") -> PositionActs:
    """Hook activation at ``positions[r]`` of token row ``rows[r]``, ``[R, d]`` float32, computed
    once per pipeline and cached on disk (see the module doc). Callers put the BOS first themselves;
    a negative position counts from the row's end."""
    if len(rows) != len(positions):
        raise SaebenchError(f"acts_at got {len(rows)} rows but {len(positions)} positions; pass one position per row")
    pos = []
    for r, (row, p) in enumerate(zip(rows, positions, strict=True)):
        q = p + len(row) if p < 0 else p
        if not 0 <= q < len(row):
            raise SaebenchError(f"position {p} is outside token row {r} of length {len(row)}; fix the prompt builder")
        pos.append(q)
    key = pipe.cache_key("positions", rows_hash(rows, pos))
    return pipe.shared(f"positions:{key}", lambda: _load(pipe, rows, pos, key, label))


def _load(pipe: ActivationPipeline, rows: list[list[int]], pos: list[int], key: str, label: str) -> PositionActs:
    t0 = time.perf_counter()

    def compute() -> dict[str, torch.Tensor]:
        return {"acts": _pass(pipe, rows, pos)}

    found, cached = pipe.cached_tensors(
        "positions", key, compute, valid=lambda t: t["acts"].shape[0] == len(rows), label=label
    )
    pipe.add_time("positions_cached_s" if cached else "positions_forward_s", t0)
    return PositionActs(found["acts"], key, cached)


@torch.no_grad()
def _pass(pipe: ActivationPipeline, rows: list[list[int]], pos: list[int]) -> torch.Tensor:
    budget = max(pipe.batch_size * pipe.tokens.ctx_len, max((len(r) for r in rows), default=1))
    out: torch.Tensor | None = None
    for take, batch, _ in padded_batches(rows, pipe.model.bos_id, budget):
        acts = pipe.acts_batch(pipe.model.prefix(batch, pipe.site))
        at = torch.tensor([pos[r] for r in take], device=acts.device)
        x = acts[torch.arange(len(take), device=acts.device), at].float().cpu()
        if out is None:
            out = torch.zeros(len(rows), x.shape[-1], dtype=torch.float32)
        out[take] = x
        pipe.counters.position_forward_batches += 1
        pipe.counters.position_rows += len(take)
    if out is None:
        raise SaebenchError("acts_at got no token rows; build at least one prompt")
    return out
