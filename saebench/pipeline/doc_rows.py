"""One row per document, and the next-token loss of each row with an edit added at the hook.

The unlearning evaluation measures a language-model loss per *document* (its sampling unit), with
and without an intervention. :func:`doc_rows` makes one row per text: the BOS id, the text's first
``ctx_len - 1`` tokens, then BOS-id padding. Special positions (every position holding the BOS id:
position 0 and the padding) are never edited and never scored. The loss of a row is the sum of
next-token cross-entropies of the predictions made at positions 1 .. len-2 (of tokens 2 .. len-1;
the prediction made at the BOS is left out, as in core's CE): ``len - 2`` targets per row.

:func:`row_states` runs the prefix (up to the hook's block) once per pipeline and set of rows;
:func:`row_losses` runs the suffix of chosen rows with ``hook activation + delta``, and the clean
losses (``delta`` = 0) are cached on disk per (model, hook, rows), like the other clean passes.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch

from saebench.errors import SaebenchError
from saebench.pipeline.states import ActivationPipeline


@dataclass
class DocRows:
    """``tokens [n, ctx]`` (BOS first, BOS-padded), ``lengths [n]`` (BOS included), ``ids`` a
    content hash per document (the sample id: two results pair exactly on the same documents)."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    ids: list[str]

    @property
    def keep(self) -> torch.Tensor:
        """``[n, ctx]`` bool: positions that hold a text token (edited, and scored as predictors)."""
        pos = torch.arange(self.tokens.shape[1]).unsqueeze(0)
        return (pos >= 1) & (pos < self.lengths.unsqueeze(1))

    @property
    def n_targets(self) -> torch.Tensor:
        """Scored predictions per row (``len - 2``)."""
        return (self.lengths - 2).clamp_min(0)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.tokens.numpy().tobytes()).hexdigest()[:16]


def doc_ids(texts: list[str]) -> list[str]:
    """A content hash per text (the unit id of a document)."""
    return [hashlib.sha256(t.encode("utf-8", "replace")).hexdigest()[:12] for t in texts]


def doc_rows(tokenize: object, bos_id: int, texts: list[str], ctx_len: int) -> DocRows:
    """One row per text (module doc); ``tokenize`` maps a string to ids without special tokens."""
    if ctx_len < 4:
        raise SaebenchError(f"unlearning ctx_len {ctx_len} is too short; use at least 4 (BOS + 3 tokens)")
    rows = torch.full((len(texts), ctx_len), int(bos_id), dtype=torch.long)
    lengths = torch.zeros(len(texts), dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [int(bos_id), *list(tokenize(t))[: ctx_len - 1]]  # type: ignore[operator]
        rows[i, : len(ids)] = torch.as_tensor(ids)
        lengths[i] = len(ids)
    return DocRows(rows, lengths, doc_ids(texts))


def row_states(pipe: ActivationPipeline, rows: DocRows, label: str) -> torch.Tensor:
    """Prefix states ``[n, ctx, d_model]`` of the rows (once per pipeline: every SAE at the hook reuses them)."""

    def compute() -> torch.Tensor:
        t0 = time.perf_counter()
        parts = []
        for s in range(0, rows.tokens.shape[0], pipe.batch_size):
            parts.append(pipe.model.prefix(rows.tokens[s : s + pipe.batch_size], pipe.site).cpu())
            pipe.counters.task_forward_batches += 1
        pipe.add_time("doc_prefix_s", t0)
        if not parts:
            raise SaebenchError(f"unlearning: no {label} documents to run")
        return torch.cat(parts)

    return pipe.shared(f"doc-rows:{label}:{rows.fingerprint()}", compute)


@torch.no_grad()
def _ce_sums(logits: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-row sum of next-token CE over the predictions at 1 .. len-2 (float64 ``[b]``)."""
    lg = logits[:, 1:-1].float()
    target = tokens[:, 2:].to(lg.device)
    out = torch.zeros(lg.shape[0], dtype=torch.float64)
    pos = torch.arange(1, tokens.shape[1] - 1).unsqueeze(0)
    scored = pos < (lengths.unsqueeze(1) - 1)  # prediction at p scores token p+1 <= len-1
    for j in range(lg.shape[0]):
        ce = torch.logsumexp(lg[j], -1) - lg[j].gather(-1, target[j].unsqueeze(-1)).squeeze(-1)
        out[j] = float((ce.double().cpu() * scored[j].double()).sum())
    return out


@torch.no_grad()
def row_losses(
    pipe: ActivationPipeline,
    rows: DocRows,
    states: torch.Tensor,
    which: torch.Tensor,
    delta: torch.Tensor | None,
) -> torch.Tensor:
    """Loss sums (float64 ``[len(which)]``) of rows ``which`` with ``hook activation + delta``
    (``delta [len(which), ctx, width]``; None: the clean run), ``pipe.batch_size`` rows per suffix call."""
    which = torch.as_tensor(which, dtype=torch.long).flatten()
    out = torch.zeros(which.numel(), dtype=torch.float64)
    dev = pipe.model.device
    for s in range(0, which.numel(), pipe.batch_size):
        idx = which[s : s + pipe.batch_size]
        st = states[idx].to(dev)
        rep = None
        if delta is not None:
            rep = pipe.acts_batch(st) + delta[s : s + pipe.batch_size].to(device=dev, dtype=st.dtype)
        logits = pipe.model.suffix(st, pipe.site, rep)
        pipe.counters.suffix_row_batches += 1
        pipe.counters.suffix_rows += int(idx.numel())
        out[s : s + idx.numel()] = _ce_sums(logits, rows.tokens[idx], rows.lengths[idx])
        del logits
    return out


def clean_losses(pipe: ActivationPipeline, rows: DocRows, states: torch.Tensor, label: str) -> torch.Tensor:
    """Clean loss sums of every row (float64 ``[n]``): computed once, cached on disk per (model, hook, rows)."""

    def load() -> torch.Tensor:
        t0 = time.perf_counter()
        key = pipe.cache_key("doc-rows-clean", rows.fingerprint())
        n = rows.tokens.shape[0]
        found, cached = pipe.cached_tensors(
            "doc-rows-clean",
            key,
            lambda: {"ce": row_losses(pipe, rows, states, torch.arange(n), None)},
            valid=lambda t: t["ce"].shape == (n,),
            label=label,
        )
        pipe.add_time("doc_clean_cached_s" if cached else "doc_clean_s", t0)
        return found["ce"]

    return pipe.shared(f"doc-rows-clean:{label}:{rows.fingerprint()}", load)
