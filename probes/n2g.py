"""Neuron2Graph explanations of SAE latents (Foote et al. 2023, "Neuron to Graph"; Gao et al. 2024's variant).

An explanation is a set of token patterns stored in a trie; a pattern predicts the latent's
activation at a token when the text ending at that token matches it. The engine is model-free:
the caller passes ``act_fn(rows, latents) -> activations`` (the activation of ``latents[r]`` at
the last token of token row ``rows[r]``; saebench's is
``saebench.pipeline.examples.latent_acts_at``, a batched pass up to the hook only). The short
pruning rows of all examples go to ``act_fn`` in one call, the longer ones (only for examples no
short suffix explained) in a second, then all saliency rows in a third, so the caller can batch
them into few model calls (N2G runs one forward per pruning step).

Per example (a context prefix ``[BOS, t_1 .. t_n]`` ending at the activating token t_n, with
activation a):

1. **Prune**: run ``[BOS] + t_{n-m+1..n}`` for m = 1 .. min(n, max_len) (lengths above
   ``PRUNE_FIRST`` only for examples no shorter suffix kept); the pattern is the
   shortest suffix whose activation is ≥ ``keep_frac`` · a (Foote et al. sec. 3.1: "prune to the
   minimal context that keeps ≥ 50% of the activation"). No suffix within ``max_len`` tokens
   keeping it: the ``max_len``-token suffix is used (counted as ``n_unpruned``).
2. **Anchor**: a pattern whose suffix is the whole prefix back to the context's BOS (m = n) is
   anchored: it matches only right after a BOS (context or document start), rendered ``^``.
3. **Saliency / wildcards**: each pattern token except the activating one is replaced by a
   padding token; if the activation stays > ``wildcard_frac`` · a_pruned the token is a
   wildcard ``*`` (it does not matter). Leading wildcards of an unanchored pattern are dropped
   (they constrain nothing but the length of the history). The activating token is never a
   wildcard (a pattern must be keyed on some token; N2G's graphs are keyed the same way).
4. **Trie**: patterns are inserted reversed (activating token first); the node that ends a
   pattern stores the pattern's activation divided by the latent's maximum activation on the
   example corpus (max over patterns ending there).

N2G's augmentation step (swapping important tokens for BERT-suggested substitutes) is not done
(Gao et al.'s variant also omits it; it needs a second language model).

**Prediction** on held-out text: at token t the trie is walked backwards (t, t-1, ...), literal
children and wildcards both followed; the prediction is the maximum stored value over all
patterns that match, 0 when none does. Truth and prediction are binarised at the firing
threshold θ (a fraction of the maximum activation): firing iff value > θ. Per latent,
token-level precision = TP/(TP+FP) (0 when nothing is predicted), recall = TP/(TP+FN),
F1 = 2PR/(P+R) (0 when P+R = 0).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

WILDCARD = -1
PRUNE_FIRST = 4  # suffix lengths tried in the first pruning call; longer ones only where needed

ActFn = Callable[[list[list[int]], list[int]], torch.Tensor]


@dataclass
class Example:
    """One activating example: ``tokens`` = context from its BOS up to and including the activating token."""

    latent: int
    tokens: list[int]
    act: float


@dataclass
class Pattern:
    """A pruned, wildcarded pattern (forward order, ending with the activating token)."""

    latent: int
    tokens: list[int]
    anchored: bool
    act: float  # activation of the pruned pattern, in model units
    norm_act: float = 0.0  # act / the latent's max activation (what the trie stores)


@dataclass
class Node:
    children: dict[int, Node] = field(default_factory=dict)
    value: float | None = None


class Trie:
    """Patterns of one latent, stored reversed (activating token at depth 1)."""

    def __init__(self, bos_id: int) -> None:
        self.root = Node()
        self.bos_id = bos_id
        self.n_patterns = 0

    def add(self, pattern: Pattern) -> None:
        node = self.root
        keys = list(reversed(pattern.tokens)) + ([self.bos_id] if pattern.anchored else [])
        for key in keys:
            node = node.children.setdefault(key, Node())
        if node.value is None:
            self.n_patterns += 1
        node.value = max(node.value or 0.0, pattern.norm_act)

    def match(self, tokens: Sequence[int], t: int) -> float:
        """Largest stored value among patterns matching the text ending at ``tokens[t]`` (0 if none)."""
        first = self.root.children.get(tokens[t])
        if first is None:
            return 0.0
        best = 0.0
        stack = [(first, t - 1)]
        while stack:
            node, i = stack.pop()
            if node.value is not None and node.value > best:
                best = node.value
            if i < 0 or not node.children:
                continue
            child = node.children.get(tokens[i])
            if child is not None:
                stack.append((child, i - 1))
            wild = node.children.get(WILDCARD)
            if wild is not None:
                stack.append((wild, i - 1))
        return best

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        """Predicted normalised activation for every token of ``tokens`` ``[S, T]`` (position 0 → 0)."""
        out = torch.zeros(tokens.shape, dtype=torch.float32)
        keys = set(self.root.children)
        for s, row in enumerate(tokens.tolist()):
            for t in range(1, len(row)):
                if row[t] in keys:
                    out[s, t] = self.match(row, t)
        return out


def build_patterns(
    examples: list[Example],
    act_fn: ActFn,
    pad_id: int,
    bos_id: int,
    max_len: int = 16,
    keep_frac: float = 0.5,
    wildcard_frac: float = 0.5,
) -> tuple[list[Pattern], dict[str, int]]:
    """Prune, anchor and wildcard every example (module doc, steps 1-3) with at most three batched
    ``act_fn`` calls: suffixes of 1..``first`` tokens for every example, longer ones only for the
    examples none of those kept (most patterns are short), then the saliency rows. The result is
    the same as trying every length at once."""
    n_of = [min(len(ex.tokens) - 1, max_len) for ex in examples]
    acts_of: list[list[float]] = [[] for _ in examples]
    n_rows = 0
    for lo, hi in ((1, PRUNE_FIRST), (PRUNE_FIRST + 1, max_len)):
        rows: list[list[int]] = []
        lats: list[int] = []
        who: list[int] = []
        for e, ex in enumerate(examples):
            if any(a >= keep_frac * ex.act for a in acts_of[e]):
                continue  # already pruned at a shorter length
            body = ex.tokens[1:]
            for m in range(lo, min(hi, n_of[e]) + 1):
                rows.append([bos_id, *body[len(body) - m :]])
                lats.append(ex.latent)
                who.append(e)
        if rows:
            got = act_fn(rows, lats)
            for e, a in zip(who, got.tolist(), strict=True):
                acts_of[e].append(a)
        n_rows += len(rows)

    pruned: list[tuple[Example, list[int], bool, float]] = []
    n_unpruned = 0
    for e, ex in enumerate(examples):
        n = n_of[e]
        if n <= 0:
            continue
        a = acts_of[e]
        ok = [i for i, v in enumerate(a) if v >= keep_frac * ex.act]
        if ok:
            m = ok[0] + 1
        else:
            m, n_unpruned = n, n_unpruned + 1
        body = ex.tokens[1:]
        pruned.append((ex, body[len(body) - m :], m == len(body), float(a[m - 1])))

    sal_rows: list[list[int]] = []
    sal_lat: list[int] = []
    for ex, toks, _, _ in pruned:
        for j in range(len(toks) - 1):
            sal_rows.append([bos_id, *toks[:j], pad_id, *toks[j + 1 :]])
            sal_lat.append(ex.latent)
    sal = act_fn(sal_rows, sal_lat) if sal_rows else torch.zeros(0)

    patterns, i = [], 0
    for ex, toks, anchored, a_pruned in pruned:
        marked = list(toks)
        for j in range(len(toks) - 1):
            if float(sal[i]) > wildcard_frac * a_pruned:
                marked[j] = WILDCARD
            i += 1
        if not anchored:
            while len(marked) > 1 and marked[0] == WILDCARD:
                marked.pop(0)
        patterns.append(Pattern(ex.latent, marked, anchored, a_pruned))
    stats = {
        "rows_prune": n_rows,
        "rows_saliency": len(sal_rows),
        "n_unpruned": n_unpruned,
        "n_anchored": sum(p.anchored for p in patterns),
    }
    return patterns, stats


def prf(truth: torch.Tensor, pred: torch.Tensor) -> dict[str, float | int | None]:
    """Token-level precision, recall, F1 of boolean ``pred`` against ``truth`` (module doc)."""
    tp = int((truth & pred).sum())
    n_pred, n_true = int(pred.sum()), int(truth.sum())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else None
    if recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "n_true": n_true, "n_pred": n_pred, "tp": tp}


def render(pattern: Pattern, decode: Callable[[list[int]], str]) -> str:
    """Human-readable pattern: ``^`` = after a BOS, ``*`` = any token, tokens JSON-quoted."""
    parts = ["^"] if pattern.anchored else []
    parts += ["*" if t == WILDCARD else json.dumps(decode([t]), ensure_ascii=False) for t in pattern.tokens]
    return " ".join(parts)


def explain_and_score(
    examples: list[Example],
    max_act: dict[int, float],
    heldout_tokens: torch.Tensor,
    heldout_acts: dict[int, torch.Tensor],
    act_fn: ActFn,
    pad_id: int,
    bos_id: int,
    decode: Callable[[list[int]], str],
    max_len: int = 16,
    keep_frac: float = 0.5,
    wildcard_frac: float = 0.5,
    threshold: float = 0.5,
    n_report: int = 5,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Explain every latent in ``max_act`` from ``examples`` and score it on held-out text.

    ``heldout_acts[latent]`` is the latent's true activation ``[S, T]`` on ``heldout_tokens``
    (position 0, the BOS, is never scored). Returns one row per latent (explanation patterns,
    precision/recall/F1, base rate) and the pruning/saliency row counts.
    """
    patterns, stats = build_patterns(examples, act_fn, pad_id, bos_id, max_len, keep_frac, wildcard_frac)
    rows = []
    for lat, mx in max_act.items():
        trie = Trie(bos_id)
        mine = [p for p in patterns if p.latent == lat]
        for p in mine:
            p.norm_act = p.act / mx if mx > 0 else 0.0
            trie.add(p)
        truth = (
            (heldout_acts[lat][:, 1:] / mx > threshold)
            if mx > 0
            else torch.zeros_like(heldout_acts[lat][:, 1:], dtype=torch.bool)
        )
        pred = trie.predict(heldout_tokens)[:, 1:] > threshold
        seen: set[str] = set()
        shown = []
        for p in sorted(mine, key=lambda p: -p.norm_act):
            text = render(p, decode)
            if text not in seen:
                seen.add(text)
                shown.append({"pattern": text, "act": round(p.norm_act, 4)})
        rows.append(
            {
                "latent": lat,
                **prf(truth, pred),
                "base_rate": float(truth.double().mean()),
                "max_act": mx,
                "n_patterns": trie.n_patterns,
                "explanation": shown[:n_report],
            }
        )
    return rows, stats
