"""Explainers that need no generating model.

``top-tokens`` is the honest offline baseline: it says which tokens the latent fires on in its
explanation examples, and nothing else. For each explanation example, every token above the
latent's activation threshold adds ``activation / max activation`` to the weight of its text
(surrounding spaces dropped, case kept); the explanation names the heaviest texts, in order, until
they hold ``coverage`` (80%) of the weight, at most ``max_tokens`` (4) of them. When one text
dominates and at least ``context_min`` (60%) of its firing positions follow the same token, that
context is named too (a one-step N2G pattern: Foote et al. 2023). So a latent that fires on " the"
is explained as ``the token "the"``, one that fires on digits as ``the tokens "1", "2", "0" and "5"``.
It cannot describe a concept it has not seen spelled out, so its scores are a floor for what an
LLM explainer should beat, never a substitute. Results name the explainer used.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from saebench.autointerp.prompts import TextExample, _clean

TOP_TOKENS = "top-tokens"
TOP_TOKENS_ABOUT = "top-tokens: the most frequent activating tokens of the explanation examples (no language model)"


def _show(tok: str) -> str:
    """A token's text as the explanation quotes it (whitespace-only tokens named)."""
    t = _clean(tok)
    s = t.strip()
    if s:
        return s
    if "↵" in t:
        return "newline"
    return "space" if t else "empty"


def top_tokens_explanation(
    examples: Sequence[TextExample],
    threshold: float,
    coverage: float = 0.8,
    max_tokens: int = 4,
    context_min: float = 0.6,
) -> str | None:
    """The baseline explanation of a latent from its explanation examples (None if nothing fires)."""
    weight: dict[str, float] = defaultdict(float)
    before: dict[str, Counter[str]] = defaultdict(Counter)
    peak = max((a for ex in examples for a in ex.acts), default=0.0)
    if peak <= 0:
        return None
    for ex in examples:
        for j, (tok, act) in enumerate(zip(ex.tokens, ex.acts, strict=True)):
            if act > threshold:
                key = _show(tok)
                weight[key] += act / peak
                if j > 0:
                    before[key][_show(ex.tokens[j - 1])] += 1
    if not weight:
        return None
    ranked = sorted(weight.items(), key=lambda kv: (-kv[1], kv[0]))
    total = sum(weight.values())
    chosen: list[str] = []
    acc = 0.0
    for text, w in ranked:
        chosen.append(text)
        acc += w
        if acc >= coverage * total or len(chosen) >= max_tokens:
            break
    quoted = [f'"{t}"' for t in chosen]
    if len(chosen) == 1:
        out = f"the token {quoted[0]}"
        ctx = before.get(chosen[0])
        if ctx:
            prev, n = ctx.most_common(1)[0]
            if n >= 2 and n >= context_min * sum(ctx.values()):
                out += f' after "{prev}"'
        return out
    return "the tokens " + ", ".join(quoted[:-1]) + " and " + quoted[-1]
