"""Log-probability scorers: detection, fuzzing and simulation read from a model's log-probabilities,
never from parsed free text. Two methods:

``judge`` (any model that follows instructions; an endpoint or the in-process scorer). One
question per item, answered by the first reply token:

- detection (SAEBench, delphi): "does the latent fire anywhere in this example?" The score of an
  example is P(yes) / (P(yes) + P(no)) from the top log-probabilities (delphi's normalisation);
- fuzzing (delphi, Paulo et al. 2024, "Automatically Interpreting Millions of Features in Large
  Language Models"): an example with some tokens marked ``<<like this>>``: "are the marked tokens
  what the explanation describes?" Positives are held-out activating examples marked at their
  activating tokens; negatives are the same examples marked at as many random non-activating
  tokens (delphi's "active" variant) and non-activating examples marked at random positions
  (delphi's default). The score is P(yes) (correctly marked);
- simulation (Bills et al. 2023, one token at a time): "how strongly does it fire on token i?",
  answered 0..9; the prediction is the expected digit under the renormalised digit distribution.

``surprisal`` (after delphi's surprisal scorer, Paulo et al. 2024; needs the log-probability of
chosen continuations, so the in-process scorer only). A small language model cannot follow
yes/no instructions (measured on SmolLM2-135M: judge AUROCs at chance whatever the explanation,
see docs/autointerp.md), but it does use a description in its context to predict text, and it
learns from two demonstrations that the token after an opening mark ``<<`` is one the feature
fires on. The prompt is those demonstrations, then ``Fires on: <explanation>`` and the example.
The *gain* of token t is the log-likelihood ratio of "the explanation" against null
explanations (``NULL_EXPLANATIONS``, same prompt; their probabilities averaged) for that token as
a marked (firing) token:

    G_t = log P(x_t | explanation, x_<t, "<<") - log mean_null P(x_t | null, x_<t, "<<")

(one continuation per position; all positions of an example share their prefix, which the
in-process scorer runs once). A good explanation raises exactly the tokens the latent fires on;
a wrong one raises others, or none. So:

- detection: the score of an example is max_t G_t (AUROC: activating vs non-activating);
- fuzzing: the judge's marked cases with their marks shown; the score is the mean gain of the
  tokens inside the marks, and P(correctly marked) = σ(mean gain) (the posterior of
  "explanation" vs "null" under equal priors: P = 0.5 where the explanation does not help);
- simulation: the prediction for token t is G_t; Pearson r with the true activations.

Measured on planted latents (tests/test_autointerp_planted.py, docs/autointerp.md): the mark is
what makes this work; the plain gain log P(x_t | explanation, x_<t) - log P(x_t | null, x_<t)
(delphi's unmarked surprisal) was dominated by the first tokens of each window and by the text's
genre, with detection AUROCs of 0.6-0.8 for true explanations and about as much for wrong ones.

Both methods: AUROC (threshold-free; ties count 1/2; items with an undefined score left out and
counted) is the headline for detection and fuzzing; balanced accuracy at P = 0.5 is reported
beside it (for surprisal detection, where max Δ is not a probability, it is None); simulation is
Pearson r over every token of every simulation example (Bills et al.'s "all at once" score).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from saebench.autointerp.prompts import (
    Messages,
    TextExample,
    _clean,
    detection_lp_messages,
    fuzzing_lp_messages,
    simulation_lp_messages,
)
from saebench.autointerp.scoring import (
    auroc,
    balanced_accuracy_at,
    expected_digit,
    normalize_activations,
    p_yes,
    pearson,
    sigmoid,
)

JUDGE = "judge"
SURPRISAL = "surprisal"
NULL_EXPLANATIONS: tuple[str, ...] = ('the token "zebra"', "names of cities and countries")

SURPRISAL_HEAD = (
    "Each text below comes after a description of what a feature fires on; the tokens where it fires are "
    "marked <<like this>>.\n\n"
    'Fires on: the word "dog"\nText: The old <<dog>> slept by the door.\n\n'
    "Fires on: numbers\nText: She paid <<25>> dollars for it.\n\n"
    "Fires on: {explanation}\nText:"
)


@dataclass
class Case:
    """One detection or fuzzing item: an example, its marked positions (fuzzing) and the truth."""

    example: TextExample
    label: bool
    marked: tuple[int, ...] | None = None


def active_positions(ex: TextExample, threshold: float) -> list[int]:
    return [j for j, a in enumerate(ex.acts) if a > threshold]


def fuzzing_cases(
    activating: Sequence[TextExample], non_activating: Sequence[TextExample], threshold: float, rng: random.Random
) -> list[Case]:
    """Correctly marked activating examples (True), the same marked at random inactive tokens (False),
    and non-activating examples marked at random positions (False; as many marks as a random positive)."""
    out: list[Case] = []
    counts: list[int] = []
    for ex in activating:
        act = active_positions(ex, threshold)
        other = [j for j in range(len(ex.tokens)) if j not in act]
        if not act or not other:
            continue
        counts.append(len(act))
        out.append(Case(ex, True, tuple(act)))
        out.append(Case(ex, False, tuple(sorted(rng.sample(other, min(len(act), len(other)))))))
    for ex in non_activating:
        if not counts or not ex.tokens:
            break
        k = min(rng.choice(counts), len(ex.tokens))
        out.append(Case(ex, False, tuple(sorted(rng.sample(range(len(ex.tokens)), k)))))
    return out


@dataclass
class Plan:
    """The items one latent needs scored and how to turn the answers into its scores."""

    items: list[Any] = field(default_factory=list)
    tags: list[tuple[str, int, int]] = field(default_factory=list)  # (what, index, position / variant)

    def add(self, item: Any, tag: tuple[str, int, int]) -> None:
        self.items.append(item)
        self.tags.append(tag)


def _classify(scores: list[float | None], probs: list[float | None] | None, labels: list[bool]) -> dict[str, Any]:
    return {
        "auroc": auroc(scores, labels),
        "balanced_accuracy": balanced_accuracy_at(probs, labels) if probs is not None else None,
        "n_positive": sum(labels),
        "n_negative": len(labels) - sum(labels),
        "n_undefined": sum(s is None for s in scores),
        "scores": [None if s is None else round(s, 6) for s in scores],
        "labels": labels,
    }


def _simulation(preds: list[list[float | None]], examples: Sequence[TextExample], max_act: float) -> dict[str, Any]:
    xs, ys, undefined = [], [], 0
    for pred, ex in zip(preds, examples, strict=True):
        for p, t in zip(pred, normalize_activations(ex.acts, max_act), strict=True):
            if p is None:
                undefined += 1
            else:
                xs.append(p)
                ys.append(t)
    return {"r": pearson(xs, ys), "n_tokens": len(xs), "n_undefined": undefined}


# -- judge -----------------------------------------------------------------------------------------


def judge_plan(
    explanation: str, detect: list[Case], fuzz: list[Case], simulate: list[TextExample], scores: Sequence[str]
) -> Plan:
    """Chat prompts, one per detection / fuzzing case and per simulated token."""
    plan = Plan()
    if "detection" in scores:
        for i, c in enumerate(detect):
            plan.add(detection_lp_messages(explanation, c.example), ("detection", i, 0))
    if "fuzzing" in scores:
        for i, c in enumerate(fuzz):
            plan.add(fuzzing_lp_messages(explanation, c.example, c.marked or ()), ("fuzzing", i, 0))
    if "simulation" in scores:
        for i, ex in enumerate(simulate):
            for j in range(len(ex.tokens)):
                plan.add(simulation_lp_messages(explanation, ex, j), ("simulation", i, j))
    return plan


def judge_scores(
    plan: Plan,
    answers: list[Any],
    detect: list[Case],
    fuzz: list[Case],
    simulate: list[TextExample],
    max_act: float,
    scores: Sequence[str],
) -> dict[str, Any]:
    """Per-kind scores from the top log-probabilities (answers aligned with ``plan.items``)."""
    det: list[float | None] = [None] * len(detect)
    fz: list[float | None] = [None] * len(fuzz)
    sim: list[list[float | None]] = [[None] * len(ex.tokens) for ex in simulate]
    for (what, i, j), top in zip(plan.tags, answers, strict=True):
        if what == "detection":
            det[i] = p_yes(top)
        elif what == "fuzzing":
            fz[i] = p_yes(top)
        else:
            sim[i][j] = expected_digit(top)
    out: dict[str, Any] = {}
    if "detection" in scores:
        out["detection"] = _classify(det, det, [c.label for c in detect])
    if "fuzzing" in scores:
        out["fuzzing"] = _classify(fz, fz, [c.label for c in fuzz])
    if "simulation" in scores:
        out["simulation"] = _simulation(sim, simulate, max_act)
    return out


# -- surprisal -------------------------------------------------------------------------------------


_SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>")


def surprisal_context(explanation: str) -> str:
    return SURPRISAL_HEAD.format(explanation=" ".join(explanation.split()))


def _piece(tok: str) -> str:
    """A token's text in the surprisal prompt: newline as ↵, special tokens (``<|endoftext|>``) as ↵."""
    return _SPECIAL.sub("↵", _clean(tok))


def _pieces(tokens: Sequence[str], marked: Sequence[int] | None = None) -> tuple[list[str], list[int]]:
    """The example as text pieces (one per token, marks as their own pieces) and the indices of the
    pieces holding the subject model's tokens (all of them, or those inside marks when ``marked``)."""
    keep = set(marked or ())
    pieces: list[str] = []
    index: list[int] = []
    for j, tok in enumerate(tokens):
        t = _piece(tok)
        if j == 0 and not t[:1].isspace():
            pieces.append(" ")  # "Text:" then a space, as in the demonstrations
        if marked is None:
            index.append(len(pieces))
            pieces.append(t)
            continue
        if j in keep:
            if j - 1 not in keep:
                lead, t = _split_lead(t)
                if lead:
                    pieces.append(lead)
                pieces.append("<<")
            index.append(len(pieces))
            pieces.append(t)
            if j + 1 not in keep:
                pieces.append(">>")
        else:
            pieces.append(t)
    return pieces, index


def _split_lead(t: str) -> tuple[str, str]:
    """Leading spaces go before a mark ("the <<dog>>"), unless the token is nothing but spaces."""
    body = t.lstrip(" ")
    return (t[: len(t) - len(body)], body) if body else ("", t)


def _marked_at(pieces: list[str], i: int) -> list[str]:
    """The pieces up to and including piece ``i``, with an opening mark just before it."""
    lead, body = _split_lead(pieces[i])
    return pieces[:i] + ([lead] if lead else []) + ["<<", body]


def _example_key(ex: TextExample) -> tuple[tuple[str, ...], tuple[float, ...]]:
    return tuple(ex.tokens), tuple(ex.acts)


def surprisal_plan(
    explanation: str, detect: list[Case], fuzz: list[Case], simulate: list[TextExample], scores: Sequence[str]
) -> tuple[Plan, list[TextExample]]:
    """Items under the explanation and under the null explanation: for every unmarked example
    (detection and simulation share them) ``(context, pieces, branches)``, branch i opening a mark
    just before token i (:meth:`EmbeddedScorer.branch_logprobs`: one row for all positions); for
    every fuzzing case ``(context, pieces)``, its marked text."""
    plan = Plan()
    ctx = {0: surprisal_context(explanation)}
    for k, null in enumerate(NULL_EXPLANATIONS, start=1):
        ctx[k] = surprisal_context(null)
    unmarked: dict[Any, int] = {}
    examples: list[TextExample] = []
    wanted = ([c.example for c in detect] if "detection" in scores else []) + (
        list(simulate) if "simulation" in scores else []
    )
    for ex in wanted:
        key = _example_key(ex)
        if key in unmarked:
            continue
        unmarked[key] = len(examples)
        examples.append(ex)
        pieces, _ = _pieces(ex.tokens)
        branches = [_marked_at(pieces, i)[i:] for i in range(len(pieces))]
        for v in ctx:
            plan.add((ctx[v], pieces, branches), ("positions", unmarked[key], v))
    if "fuzzing" in scores:
        for i, c in enumerate(fuzz):
            for v in ctx:
                plan.add((ctx[v], _pieces(c.example.tokens, c.marked or ())[0]), ("fuzzing", i, v))
    return plan, examples


def surprisal_scores(
    plan: Plan,
    answers: list[Any],
    examples: list[TextExample],
    detect: list[Case],
    fuzz: list[Case],
    simulate: list[TextExample],
    max_act: float,
    scores: Sequence[str],
) -> dict[str, Any]:
    """Per-kind scores from the per-piece log-probabilities (answers aligned with ``plan.items``)."""
    marked_lp: dict[tuple[int, int], list[float | None]] = {}
    lp_fuzz: dict[tuple[int, int], list[float | None]] = {}
    for (what, i, v), lps in zip(plan.tags, answers, strict=True):
        (marked_lp if what == "positions" else lp_fuzz)[(i, v)] = lps

    n_null = len(NULL_EXPLANATIONS)

    def gain_at(lps: dict[tuple[int, int], list[float | None]], i: int, k: int) -> float | None:
        """log P under the explanation minus log of the mean probability under the null explanations."""
        e = lps[(i, 0)][k]
        nulls = [lps[(i, v)][k] for v in range(1, n_null + 1)]
        if e is None or any(x is None for x in nulls):
            return None
        top = max(nulls)
        return e - (top + math.log(math.fsum(math.exp(x - top) for x in nulls) / n_null))

    gain: dict[Any, list[float | None]] = {}
    for k, ex in enumerate(examples):
        _, index = _pieces(ex.tokens)
        gain[_example_key(ex)] = [gain_at(marked_lp, k, i) for i in index]
    out: dict[str, Any] = {}
    if "detection" in scores:
        det = []
        for c in detect:
            g = [x for x in gain[_example_key(c.example)] if x is not None]
            det.append(max(g) if g else None)
        out["detection"] = _classify(det, None, [c.label for c in detect])
    if "fuzzing" in scores:
        fz: list[float | None] = []
        for i, c in enumerate(fuzz):
            _, index = _pieces(c.example.tokens, c.marked or ())
            g = [x for x in (gain_at(lp_fuzz, i, k) for k in index) if x is not None]
            fz.append(math.fsum(g) / len(g) if g else None)
        probs = [None if s is None else sigmoid(s) for s in fz]
        out["fuzzing"] = _classify(fz, probs, [c.label for c in fuzz])
    if "simulation" in scores:
        out["simulation"] = _simulation([gain[_example_key(ex)] for ex in simulate], simulate, max_act)
    return out


# -- one entry point for both methods -------------------------------------------------------------


@dataclass
class LatentCases:
    """A latent's detection and fuzzing cases and simulation examples (built once, seeded)."""

    detect: list[Case]
    fuzz: list[Case]
    simulate: list[TextExample]
    max_act: float


def build_plan(method: str, explanation: str, cases: LatentCases, scores: Sequence[str]) -> tuple[Plan, Any]:
    if method == JUDGE:
        return judge_plan(explanation, cases.detect, cases.fuzz, cases.simulate, scores), None
    return surprisal_plan(explanation, cases.detect, cases.fuzz, cases.simulate, scores)


def finish(
    method: str, plan: Plan, extra: Any, answers: list[Any], cases: LatentCases, scores: Sequence[str]
) -> dict[str, Any]:
    if method == JUDGE:
        return judge_scores(plan, answers, cases.detect, cases.fuzz, cases.simulate, cases.max_act, scores)
    return surprisal_scores(plan, answers, extra, cases.detect, cases.fuzz, cases.simulate, cases.max_act, scores)


Backend = Callable[[list[Any]], list[Any]]  # items -> answers (an Exception in place of a failed one)
__all__ = ["JUDGE", "SURPRISAL", "Case", "LatentCases", "Messages", "build_plan", "finish", "fuzzing_cases"]
