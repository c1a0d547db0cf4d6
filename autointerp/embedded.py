"""The in-process scorer: next-token log-probabilities of the embedded SmolLM2-135M-Instruct through
transformers (no server, no network).

It answers the one question every log-probability scorer asks (:mod:`saebench.autointerp.logprob`):
*given these chat messages, what are the top-k candidates for the first token of the assistant's
reply, and their log-probabilities?* That is exactly what an OpenAI-compatible endpoint returns for
``max_tokens=1, logprobs=true, top_logprobs=k``, so both paths share the prompts, the scoring and the
on-disk cache format, and give the same numbers up to float rounding (tested).

Cost (2 CPU cores): prompts are rendered with the model's own chat template (as ``transformers
serve`` / vLLM would), tokenized, sorted (prompts sharing a prefix become neighbours) and run in
batches of ``batch_size``. Within a batch the longest common token prefix is run once (batch 1) and
its key/value cache is shared by every row (expanded, not copied); only the rows' suffixes run in
the batch (right-padded: under the causal mask a real token never sees the padding after it, so no
attention mask is needed). Prefix caches are memoised (LRU): the few-shot demonstration turns that
open every prompt of a kind, and the explanation + example text shared by every position of a
simulated example, are computed once. The final norm + unembedding run only at each row's last
real token. ``share_prefix=False`` runs every prompt in full (the oracle the tests compare against).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saebench.autointerp.cache import ResponseCache

Messages = list[dict[str, str]]
TopLogprobs = list[tuple[str, float]]

#: the name the embedded scorer goes by in configs, results and cache keys
EMBEDDED = "embedded"


@dataclass
class EmbeddedUsage:
    """What the in-process scorer did: prompts scored, cache hits, tokens and forward calls."""

    prompts: int = 0  # questions answered by running the model (a branch row: one per branch)
    cached: int = 0  # questions answered from the on-disk cache (same unit)
    prompt_tokens: int = 0  # tokens of the scored prompts (what an endpoint would bill)
    computed_tokens: int = 0  # tokens actually run through the model (shared prefixes once)
    forward_calls: int = 0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "cached_prompts": self.cached,
            "prompt_tokens": self.prompt_tokens,
            "computed_tokens": self.computed_tokens,
            "forward_calls": self.forward_calls,
            "scorer_wall_s": round(self.wall_s, 3),
        }


@dataclass
class _Row:
    """One sequence of a batch: a causal ``trunk`` and ``branches`` ``(point, ids)`` that continue the
    trunk's first ``point`` tokens; ``limit`` caps the prefix shared with other rows."""

    trunk: list[int]
    branches: list[tuple[int, list[int]]]
    limit: int
    scored: list[int] = field(default_factory=list)  # per branch: how many of its last tokens are scored
    offsets: list[int] = field(default_factory=list)  # where each branch starts in the row's suffix


@dataclass
class _Prefix:
    """Key/value states of a token prefix: one ``(k, v)`` ``[1, heads, P, d]`` pair per layer."""

    ids: tuple[int, ...]
    kv: list[tuple[torch.Tensor, torch.Tensor]] = field(repr=False)


def _common_prefix(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _make_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> Any:
    """A transformers ``DynamicCache`` holding ``kv`` expanded to ``batch`` rows (views, no copies)."""
    from transformers import DynamicCache

    data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv]
    try:
        return DynamicCache(ddp_cache_data=data)
    except TypeError:  # pragma: no cover - transformers 4.x before the ddp_cache_data keyword
        return DynamicCache.from_legacy_cache(tuple(data))


def _cache_kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The per-layer ``(keys, values)`` of a transformers cache (4.x and 5.x layouts)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return [(k, v) for k, v in zip(cache.key_cache, cache.value_cache, strict=True)]  # pragma: no cover


class EmbeddedScorer:
    """Top-k next-token log-probabilities of chat prompts on the embedded model, batched and cached.

    Thread-safe (one lock: the model runs one batch at a time). ``model``/``tokenizer`` default to
    :func:`saebench.models.load_embedded_hf` (the dequantized SmolLM2 folder); tests may pass others.
    """

    def __init__(
        self,
        top_k: int = 20,
        batch_size: int = 16,
        cache_dir: Path | None = None,
        share_prefix: bool = True,
        model: Any = None,
        tokenizer: Any = None,
        model_id: str | None = None,
        max_prefixes: int = 8,
    ) -> None:
        if model is None or tokenizer is None:
            from saebench.models import _hf_folder, load_embedded_hf

            model, tokenizer = load_embedded_hf()
            model_id = model_id or f"{EMBEDDED}:{_hf_folder().name}"
        self.model = model.eval()
        self.tok = tokenizer
        self.model_id = model_id or f"{EMBEDDED}:{type(model).__name__}"
        self.top_k = int(top_k)
        self.batch_size = max(1, int(batch_size))
        self.share_prefix = share_prefix
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self.usage = EmbeddedUsage()
        self._prefixes: OrderedDict[tuple[int, ...], _Prefix] = OrderedDict()
        self._max_prefixes = max_prefixes
        self._lock = threading.Lock()
        self._vocab: dict[int, str] = {}
        self._enc: dict[str, list[int]] = {}
        import inspect

        params = inspect.signature(self.model.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x

    # -- public -------------------------------------------------------------------------------
    def request(self, messages: Messages) -> dict[str, Any]:
        """The canonical request (what keys the cache), shaped like the endpoint's logprob request."""
        return {"model": self.model_id, "messages": messages, "top_logprobs": self.top_k, "kind": "next_token"}

    def render(self, messages: Messages) -> list[int]:
        """Token ids of the prompt: the chat template with the assistant turn opened."""
        out = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):  # transformers 5 may return a BatchEncoding
            out = out["input_ids"]
        return [int(t) for t in out]

    def top_logprobs(self, prompts: list[Messages]) -> list[TopLogprobs]:
        """For each chat prompt, the ``top_k`` most likely first reply tokens with their log-probabilities."""

        def encode(m: Messages) -> _Row:
            ids = self.render(m)
            return _Row(ids, [], len(ids) - 1)

        def compute(row: _Row, hidden: torch.Tensor, n: int) -> TopLogprobs:
            logp = torch.log_softmax(self.model.lm_head(hidden[len(row.trunk) - 1 - n]).float(), dim=-1)
            vals, idx = logp.topk(min(self.top_k, logp.shape[-1]))
            return [(self._decode(int(t)), float(v)) for v, t in zip(vals.tolist(), idx.tolist(), strict=True)]

        reqs = [(self.request(m), m) for m in prompts]
        return self._cached_run(reqs, "top_logprobs", encode, compute, lambda v: [(str(t), float(x)) for t, x in v])

    def continuation_logprobs(self, items: list[tuple[str, list[str]]]) -> list[list[float | None]]:
        """For each ``(context, pieces)``: log P(piece_j | context + pieces before j), per piece.

        A piece (one token of the subject model, as text) is tokenized on its own by the scorer's
        tokenizer; its log-probability is the sum over its scorer tokens (None for an empty piece).
        """

        def encode(item: tuple[str, list[str]]) -> _Row:
            context, pieces = item
            ctx = self._encode(context)
            return _Row(ctx + [t for p in pieces for t in self._encode(p)], [], len(ctx) - 1)

        def compute(row: _Row, hidden: torch.Tensor, n: int) -> list[float]:
            start = row.limit + 1  # first continuation token
            return self._token_lps(hidden[start - 1 - n : len(row.trunk) - 1 - n], row.trunk[start:])

        reqs = [
            ({"model": self.model_id, "kind": "continuation", "context": c, "pieces": list(p)}, (c, list(p)))
            for c, p in items
        ]
        lps = self._cached_run(reqs, "token_logprobs", encode, compute, lambda v: [float(x) for x in v])
        return [self._per_piece(pieces, lp) for (_, pieces), lp in zip(items, lps, strict=True)]

    def branch_logprobs(self, items: list[tuple[str, list[str], list[list[str]]]]) -> list[list[float | None]]:
        """For each ``(context, pieces, branches)`` (one branch per piece): value i is
        log P(last piece of branches[i] | context + pieces[:i] + branches[i][:-1]).

        All branches of an item run in ONE row: the trunk (context + pieces) is causal, and branch i
        (its own positions continuing from piece i) attends to the trunk before piece i and to itself
        only, through a custom attention mask: what one sequence per branch would compute (tested),
        for the cost of one. The surprisal scorer's measurement (a mark opened before each token).
        """

        def encode(item: tuple[str, list[str], list[list[str]]]) -> _Row:
            context, pieces, branches = item
            ctx = self._encode(context)
            trunk, points = list(ctx), []
            for p in pieces:
                points.append(len(trunk))
                trunk += self._encode(p)
            br = [(pt, [t for q in b for t in self._encode(q)]) for pt, b in zip(points, branches, strict=True)]
            scored = [len(self._encode(b[-1])) if b else 0 for b in branches]
            return _Row(trunk, br, len(ctx), scored)

        def compute(row: _Row, hidden: torch.Tensor, n: int) -> list[float]:
            out: list[float] = []
            for (point, toks), off, m in zip(row.branches, row.offsets, row.scored, strict=True):
                pos = [off + k - 1 if k > 0 else point - 1 - n for k in range(len(toks) - m, len(toks))]
                out.append(math.fsum(self._token_lps(hidden[pos], toks[len(toks) - m :])) if m else float("nan"))
            return out

        reqs = []
        for c, p, b in items:
            req = {"model": self.model_id, "kind": "branches", "context": c, "pieces": list(p), "branches": b}
            reqs.append((req, (c, list(p), [list(x) for x in b])))
        got = self._cached_run(
            reqs, "token_logprobs", encode, compute, lambda v: [float(x) for x in v], lambda it: max(1, len(it[2]))
        )
        return [[None if not math.isfinite(v) else v for v in vals] for vals in got]

    # -- internals ----------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        if text not in self._enc:
            self._enc[text] = [int(t) for t in self.tok(text, add_special_tokens=False)["input_ids"]]
        return self._enc[text]

    def _per_piece(self, pieces: list[str], lps: list[float]) -> list[float | None]:
        per, k = [], 0
        for p in pieces:
            m = len(self._encode(p))
            per.append(math.fsum(lps[k : k + m]) if m else None)
            k += m
        return per

    def _token_lps(self, h: torch.Tensor, targets: list[int]) -> list[float]:
        """log P(target_k) from the final hidden states ``h[k]`` (unembedding only these positions)."""
        if not targets:
            return []
        logp = torch.log_softmax(self.model.lm_head(h).float(), dim=-1)
        return logp[torch.arange(len(targets)), torch.tensor(targets)].tolist()

    def _cached_run(
        self, items: list[tuple[dict[str, Any], Any]], field_name: str, encode, compute, load, questions=None
    ) -> list[Any]:
        """Cache lookups, then batched forwards for the misses (sorted so shared prefixes are neighbours).

        ``encode(item) -> _Row``; ``compute(row, hidden, n)`` turns the row's suffix hidden states
        (``[S, d]``, the shared prefix of length ``n`` excluded) into its value. ``questions(item)``
        is how many prompts an item stands for (a branch row: one per branch; default 1), the unit of
        both ``usage.prompts`` and ``usage.cached``.
        """
        questions = questions or (lambda item: 1)
        with self._lock, torch.no_grad():
            t0 = time.perf_counter()
            out: list[Any] = [None] * len(items)
            todo: list[tuple[int, _Row, dict[str, Any], int]] = []
            for i, (req, item) in enumerate(items):
                hit = self.cache.get(req) if self.cache is not None else None
                if hit is not None and isinstance(hit.get(field_name), list):
                    out[i] = load(hit[field_name])
                    self.usage.cached += questions(item)
                    continue
                todo.append((i, encode(item), req, questions(item)))
            todo.sort(key=lambda r: r[1].trunk)
            for b in range(0, len(todo), self.batch_size):
                chunk = todo[b : b + self.batch_size]
                rows = [r for _, r, _, _ in chunk]
                hidden, n = self._suffix_hidden(rows)
                for j, (i, row, req, q) in enumerate(chunk):
                    v = compute(row, hidden[j], n)
                    out[i] = v
                    self.usage.prompts += q  # a branch is one question: count it as the prompt it stands for
                    self.usage.prompt_tokens += (
                        sum(pt + len(t) for pt, t in row.branches) if row.branches else len(row.trunk)
                    )
                    if self.cache is not None:
                        first = v[0][0] if field_name == "top_logprobs" and v else ""
                        self.cache.put(req, first, {"prompt_tokens": len(row.trunk)}, **{field_name: v})
            self.usage.wall_s += time.perf_counter() - t0
            return out

    def _decode(self, tid: int) -> str:
        if tid not in self._vocab:
            self._vocab[tid] = self.tok.decode([tid])
        return self._vocab[tid]

    def _forward(
        self,
        ids: torch.Tensor,
        kv: list[tuple[torch.Tensor, torch.Tensor]] | None,
        keep: bool = False,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> tuple[Any, Any]:
        """Hidden states after the final norm (and the cache when ``keep``), for ``ids`` after the prefix ``kv``."""
        past = _make_cache(kv, ids.shape[0]) if kv else None
        extra: dict[str, Any] = {}
        if mask is not None:
            extra = {"attention_mask": mask, "position_ids": positions}
        out = self.model.model(input_ids=ids, **{self._cache_arg: past}, use_cache=keep, **extra)
        self.usage.forward_calls += 1
        self.usage.computed_tokens += int(ids.numel())
        return out.last_hidden_state, out.past_key_values

    def _prefix(self, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The key/value states of ``ids``, extending the memoised prefix that shares most of it."""
        key = tuple(ids)
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            return self._prefixes[key].kv
        best, best_n = None, 0
        for p in self._prefixes.values():
            n = _common_prefix(p.ids, key)
            if n > best_n:
                best, best_n = p, n
        base = [(k[:, :, :best_n], v[:, :, :best_n]) for k, v in best.kv] if best is not None else None
        if base is not None and best_n == len(key):
            kv = base  # a longer memoised prefix holds all of it
        else:
            _, cache = self._forward(torch.tensor([ids[best_n:]], dtype=torch.long), base, keep=True)
            kv = [(k.detach(), v.detach()) for k, v in _cache_kv(cache)]
        self._prefixes[key] = _Prefix(key, kv)
        while len(self._prefixes) > self._max_prefixes:
            self._prefixes.popitem(last=False)
        return kv

    @torch.no_grad()
    def _suffix_hidden(self, rows: list[_Row]) -> tuple[torch.Tensor, int]:
        """Final-norm hidden states ``[B, S, d]`` of the rows after their shared prefix of length ``n``.

        ``n`` is the longest common trunk prefix, capped at every row's ``limit`` (positions the
        caller reads stay in the suffix). A row's suffix is its trunk after ``n`` then its branches;
        rows are right-padded with token 0. Without branches no mask is needed (causal: a real token
        never sees the padding after it); with branches a 4-D additive mask says who sees whom and
        ``position_ids`` give each branch the positions it would have as its own sequence.
        """
        n = 0
        if self.share_prefix:
            n = len(rows[0].trunk)
            for r in rows[1:]:
                n = min(n, _common_prefix(rows[0].trunk, r.trunk))
            n = max(0, min([n] + [r.limit for r in rows]))
        kv = self._prefix(rows[0].trunk[:n]) if n > 0 else None
        seqs = []
        for r in rows:
            seq = list(r.trunk[n:])
            offs = []
            for _, toks in r.branches:
                offs.append(len(seq))
                seq += toks
            r.offsets = offs
            seqs.append(seq)
        width = max(len(x) for x in seqs)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for j, x in enumerate(seqs):
            ids[j, : len(x)] = torch.tensor(x, dtype=torch.long)
        if not any(r.branches for r in rows):
            hidden, _ = self._forward(ids, kv)
            return hidden, n
        neg = torch.finfo(torch.float32).min
        mask = torch.full((len(rows), 1, width, n + width), neg, dtype=torch.float32)
        pos = torch.zeros(len(rows), width, dtype=torch.long)
        mask[:, :, :, :n] = 0.0
        for j, r in enumerate(rows):
            t = len(r.trunk) - n
            causal = torch.ones(t, t, dtype=torch.bool).tril()
            mask[j, 0, :t, n : n + t].masked_fill_(causal, 0.0)
            pos[j, :t] = torch.arange(n, n + t)
            for (point, toks), off in zip(r.branches, r.offsets, strict=True):
                m = len(toks)
                rows_sl = slice(off, off + m)
                mask[j, 0, rows_sl, n : n + (point - n)] = 0.0  # the trunk before the branch point
                own = torch.ones(m, m, dtype=torch.bool).tril()
                mask[j, 0, rows_sl, n + off : n + off + m].masked_fill_(own, 0.0)
                pos[j, off : off + m] = torch.arange(point, point + m)
            used = len(seqs[j])
            for q in range(used, width):  # padding attends to itself only (never read)
                mask[j, 0, q, n + q] = 0.0
        hidden, _ = self._forward(ids, kv, mask=mask, positions=pos)
        return hidden, n
