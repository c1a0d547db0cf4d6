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


# -- log-probability scorers ---------------------------------------------------------------------
#
# Each prompt ends where the scorer's first reply token decides the answer: "Yes"/"No" for
# detection and fuzzing, one digit 0..9 for simulation. A few demonstration turns (a made-up
# "dog" feature and a "numbers" feature, never drawn from the data) come first and are identical
# across prompts of a kind, so the in-process scorer computes them once and an endpoint's prefix
# cache can reuse them. Simulation uses the digits 0..9 (not Bills et al.'s 0..10): "10" is two
# tokens in digit-splitting tokenizers (SmolLM2, Llama 3), so its probability would hide under
# "1"; Pearson r does not depend on the scale.

DETECT_LP_SYSTEM = (
    "You check explanations of a feature of a language model. The feature fires on some tokens of a "
    "text. You are given an explanation of what the feature fires on and a text. Answer Yes if the "
    "feature fires on at least one token of the text, and No otherwise. Answer with one word: Yes or No."
)
FUZZ_LP_SYSTEM = (
    "You check explanations of a feature of a language model. The feature fires on some tokens of a "
    "text. You are given an explanation of what the feature fires on and a text in which some tokens "
    "are marked <<like this>>. Answer Yes if the marked tokens are exactly the kind of tokens the "
    "explanation describes, and No if they are not. Answer with one word: Yes or No."
)
SIM_LP_SYSTEM = (
    "You predict a feature of a language model from an explanation of what it fires on. You are given "
    "the explanation, a text, and one token of that text. Answer how strongly the feature fires on "
    "that token, with one digit from 0 (not at all) to 9 (as strongly as it ever does). Most tokens "
    "are 0. Answer with the digit only."
)

_DOG = 'the word "dog"'
_NUM = "numbers and digits"
_DETECT_DEMOS = [
    (_DOG, "The old dog slept by the door all day.", "Yes"),
    (_DOG, "It rained for most of the afternoon.", "No"),
    (_NUM, "She paid 25 dollars for the tickets.", "Yes"),
    (_NUM, "He walked home slowly after work.", "No"),
]
_FUZZ_DEMOS = [
    (_DOG, "The old <<dog>> slept by the door all day.", "Yes"),
    (_DOG, "The old dog slept by the <<door>> all day.", "No"),
    (_NUM, "She paid <<25>> dollars for the tickets.", "Yes"),
    (_NUM, "She <<paid>> 25 dollars for the tickets.", "No"),
]
_SIM_DEMOS = [
    (_DOG, ["The", " old", " dog", " slept"], 2, "9"),
    (_DOG, ["The", " old", " dog", " slept"], 3, "0"),
    (_NUM, ["She", " paid", " ", "2", "5", " dollars"], 3, "9"),
    (_NUM, ["She", " paid", " ", "2", "5", " dollars"], 1, "0"),
]


def _demos(system: str, turns: list[tuple[str, str]]) -> Messages:
    msgs: Messages = [{"role": "system", "content": system}]
    for user, answer in turns:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return msgs


def _detect_user(explanation: str, text: str) -> str:
    return f"Explanation: {explanation}\nText: {text}\nDoes the feature fire on this text?"


def _fuzz_user(explanation: str, text: str) -> str:
    return f"Explanation: {explanation}\nText: {text}\nAre the marked tokens what the explanation describes?"


def _sim_user(explanation: str, tokens: Sequence[str], i: int) -> str:
    text = "".join(_clean(t) for t in tokens)
    return f"Explanation: {explanation}\nText: {text}\nToken {i + 1}: {_quote(tokens[i])}\nHow strongly does it fire?"


def _quote(tok: str) -> str:
    """A token shown unambiguously: its text in double quotes (newline as ↵, leading space kept)."""
    return '"' + _clean(tok).replace('"', '\\"') + '"'


def detection_lp_messages(explanation: str, example: TextExample) -> Messages:
    """One detection question: does the latent fire anywhere in this (unmarked) example? Yes/No."""
    demos = _demos(DETECT_LP_SYSTEM, [(_detect_user(e, t), a) for e, t, a in _DETECT_DEMOS])
    return [*demos, {"role": "user", "content": _detect_user(explanation, example.text())}]


def fuzzing_lp_messages(explanation: str, example: TextExample, marked: Sequence[int]) -> Messages:
    """One fuzzing question (delphi): are the tokens at positions ``marked`` what the explanation describes?"""
    demos = _demos(FUZZ_LP_SYSTEM, [(_fuzz_user(e, t), a) for e, t, a in _FUZZ_DEMOS])
    return [*demos, {"role": "user", "content": _fuzz_user(explanation, mark_tokens(example.tokens, marked))}]


def simulation_lp_messages(explanation: str, example: TextExample, i: int) -> Messages:
    """One simulation question (Bills et al., one token at a time): activation 0..9 of token ``i``.

    Every position of an example shares the prompt up to the token's line, so the in-process
    scorer runs the explanation and text once per example.
    """
    demos = _demos(SIM_LP_SYSTEM, [(_sim_user(e, toks, j), a) for e, toks, j, a in _SIM_DEMOS])
    return [*demos, {"role": "user", "content": _sim_user(explanation, example.tokens, i)}]


def mark_tokens(tokens: Sequence[str], marked: Sequence[int]) -> str:
    """The example as one line with the tokens at ``marked`` wrapped ``<<like this>>`` (runs merged)."""
    keep = set(marked)
    parts = []
    for j, tok in enumerate(tokens):
        t = _clean(tok)
        if j in keep:
            opens = j - 1 not in keep
            closes = j + 1 not in keep
            lead = len(t) - len(t.lstrip(" ")) if opens else 0  # keep the space outside the marks
            t = (t[:lead] + "<<" + t[lead:]) if opens else t
            t = t + ">>" if closes else t
        parts.append(t)
    return "".join(parts)
