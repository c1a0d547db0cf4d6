"""Prompts for explanation, detection and simulation (chat messages for any OpenAI-compatible API).

Written for saebench after the designs of Bills et al. (2023), SAEBench's autointerp and
EleutherAI's delphi: the explainer sees activating examples with the activating tokens marked
``<<like this>>`` (strongest examples first); the detection scorer sees unmarked, shuffled
examples and names the ones that activate; the simulation scorer predicts 0..10 per token.
Each prompt has a *stricter* variant, sent once when a reply could not be parsed.

Examples are short token windows around an activation (see :mod:`saebench.pipeline.examples`); newlines
are shown as ``↵`` so that one example is one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Messages = list[dict[str, str]]


@dataclass
class TextExample:
    """One example window: decoded tokens, their latent activations, and whether it activates."""

    tokens: list[str]
    acts: list[float]
    active: bool  # any token above the latent's activation threshold

    def text(self, threshold: float | None = None) -> str:
        """The window as one line; tokens with activation > ``threshold`` marked ``<<tok>>``."""
        parts = []
        for tok, act in zip(self.tokens, self.acts, strict=True):
            tok = _clean(tok)
            parts.append(f"<<{tok}>>" if threshold is not None and act > threshold else tok)
        return "".join(parts)


def _clean(tok: str) -> str:
    return tok.replace("\r", "").replace("\n", "↵").replace("\ufffd", "")


EXPLAIN_SYSTEM = (
    "You are helping to interpret a latent (a feature) of a sparse autoencoder trained on a language "
    "model's internal activations. The latent fires on particular tokens, words, substrings or "
    "concepts. You will see short text excerpts on which it fires, strongest first; the tokens where "
    "it fires are marked <<like this>>. Describe in one short phrase (at most 20 words) what the "
    "latent responds to. Cover most of the marked tokens rather than one example, mention "
    "capitalisation, punctuation or position when they seem to matter, and avoid long word lists. "
    "Reply with the phrase only, with no preamble and no formatting."
)
EXPLAIN_STRICT = (
    "Your reply could not be used. Reply with ONE line only: a phrase of at most 20 words describing "
    "what the latent responds to. No lists, no quotes, no explanation of your reasoning."
)


def explanation_messages(examples: Sequence[TextExample], thresholds: Sequence[float]) -> Messages:
    """The explainer's prompt: numbered excerpts with activating tokens marked."""
    lines = [f"{i}. {ex.text(th)}" for i, (ex, th) in enumerate(zip(examples, thresholds, strict=True), start=1)]
    return [
        {"role": "system", "content": EXPLAIN_SYSTEM},
        {
            "role": "user",
            "content": "Excerpts where the latent fires:\n\n"
            + "\n".join(lines)
            + "\n\nWhat does the latent respond to?",
        },
    ]


def detection_messages(explanation: str, examples: Sequence[TextExample]) -> Messages:
    """The detection scorer's prompt: the explanation and numbered, unmarked, shuffled excerpts."""
    n = len(examples)
    lines = [f"{i}. {ex.text()}" for i, ex in enumerate(examples, start=1)]
    system = (
        "You are testing an explanation of a latent (a feature) of a sparse autoencoder trained on a "
        f"language model. You will read the explanation and {n} numbered text excerpts. Decide on "
        "which excerpts the latent fires at least once, on any token. Reply with the numbers of those "
        "excerpts separated by commas (for example: 2, 5, 7), or with the single word None if it "
        "fires on none of them. Reply with nothing else."
    )
    user = f"Explanation: the latent fires on {explanation}\n\nExcerpts:\n" + "\n".join(lines)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def detection_strict(n: int) -> str:
    """Appended after an unparseable detection reply."""
    return (
        f"Your reply could not be read. Reply with ONLY the numbers (between 1 and {n}) of the excerpts "
        "where the latent fires, separated by commas, or the single word None. No other words."
    )


def simulation_messages(explanation: str, examples: Sequence[TextExample]) -> Messages:
    """The simulator's prompt (Bills et al.): predict an activation 0..10 for every token."""
    blocks = []
    for i, ex in enumerate(examples, start=1):
        toks = " | ".join(_clean(t) if _clean(t).strip() else repr(_clean(t)) for t in ex.tokens)
        blocks.append(f"Excerpt {i} ({len(ex.tokens)} tokens): {toks}")
    system = (
        "You simulate a latent (a feature) of a sparse autoencoder trained on a language model, given an "
        "explanation of what it responds to. For each excerpt (its tokens are separated by ' | ') predict "
        "the latent's activation on every token as an integer from 0 (off) to 10 (strongest). Reply with "
        "one line per excerpt, in the form 'N: a, b, c, ...' where N is the excerpt number and there is "
        "exactly one number per token, in order. Most tokens are usually 0. Reply with nothing else."
    )
    user = f"Explanation: the latent fires on {explanation}\n\n" + "\n".join(blocks)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def simulation_strict(lengths: Sequence[int]) -> str:
    """Appended after an unparseable simulation reply."""
    spec = ", ".join(f"line {i} has {n} numbers" for i, n in enumerate(lengths, start=1))
    return (
        "Your reply could not be read. Reply with ONLY lines of the form 'N: a, b, c' with integers 0-10, "
        f"one line per excerpt ({spec}). No other text."
    )
