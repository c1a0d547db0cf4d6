"""Scoring math for autointerp: detection and simulation (pure functions, no I/O).

- Detection (SAEBench's autointerp, delphi's detection scorer): the scorer LLM is shown a shuffled
  mix of held-out activating and non-activating examples and names the ones it thinks activate.
  We report balanced accuracy = (TPR + TNR) / 2 (chance is 0.5 whatever the class mix; SAEBench
  reports plain accuracy, which rewards predicting "none" when most examples are negative),
  precision = TP / (TP + FP) and recall = TP / (TP + FN). A ratio whose denominator is zero
  (no predicted positives, no true positives...) is ``None``, never NaN.
- Simulation (Bills et al. 2023, "Language models can explain neurons in language models"): the
  scorer predicts an activation 0..10 for every token of held-out examples; the score is the
  Pearson correlation between predicted and true activations over all tokens of all examples
  at once ("all at once" scoring). True activations are put on the same 0..10 scale by dividing
  by the latent's maximum activation, which does not change r. A constant prediction (or constant
  truth) leaves r undefined: ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _ratio(num: float, den: float) -> float | None:
    """num/den, or None when the denominator is zero (undefined, never NaN)."""
    return num / den if den else None


def detection_scores(predicted: Sequence[bool], truth: Sequence[bool]) -> dict[str, float | int | None]:
    """Balanced accuracy, accuracy, precision and recall of binary predictions against the truth."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} examples")
    tp = sum(1 for p, t in zip(predicted, truth, strict=True) if p and t)
    fp = sum(1 for p, t in zip(predicted, truth, strict=True) if p and not t)
    fn = sum(1 for p, t in zip(predicted, truth, strict=True) if not p and t)
    tn = len(truth) - tp - fp - fn
    tpr, tnr = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    rates = [r for r in (tpr, tnr) if r is not None]
    return {
        "balanced_accuracy": sum(rates) / len(rates) if rates else None,
        "accuracy": _ratio(tp + tn, len(truth)),
        "precision": _ratio(tp, tp + fp),
        "recall": tpr,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation of two equal-length sequences (float64); None if either is constant."""
    if len(x) != len(y):
        raise ValueError(f"pearson: lengths differ ({len(x)} vs {len(y)})")
    n = len(x)
    if n < 2:
        return None
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    dx = [a - mx for a in x]
    dy = [b - my for b in y]
    sxx = math.fsum(a * a for a in dx)
    syy = math.fsum(b * b for b in dy)
    if sxx <= 0.0 or syy <= 0.0 or not math.isfinite(sxx * syy):
        return None
    r = math.fsum(a * b for a, b in zip(dx, dy, strict=True)) / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, r))


def normalize_activations(acts: Sequence[float], max_act: float) -> list[float]:
    """True activations on the simulator's 0..10 scale (Bills et al.): 10 * a / max, clipped at 0."""
    if max_act <= 0:
        return [0.0 for _ in acts]
    return [max(0.0, 10.0 * float(a) / max_act) for a in acts]


def simulation_score(predicted: Sequence[Sequence[float]], truth: Sequence[Sequence[float]]) -> float | None:
    """Bills et al.'s "all at once" score: Pearson r over every token of every example."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} simulated examples for {len(truth)} true ones")
    flat_p: list[float] = []
    flat_t: list[float] = []
    for p, t in zip(predicted, truth, strict=True):
        if len(p) != len(t):
            raise ValueError(f"simulated {len(p)} tokens for an example of {len(t)}")
        flat_p.extend(float(v) for v in p)
        flat_t.extend(float(v) for v in t)
    return pearson(flat_p, flat_t)


# -- threshold-free scores (log-probability scorers) ----------------------------------------------


def auroc(scores: Sequence[float | None], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties 1/2.

    The Mann-Whitney U statistic divided by n_pos * n_neg (exact, O(n log n) via ranks). Items whose
    score is None are left out; None when either class is then empty.
    """
    pairs = [(float(s), bool(y)) for s, y in zip(scores, labels, strict=True) if s is not None and math.isfinite(s)]
    n_pos = sum(1 for _, y in pairs if y)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
    ranks = [0.0] * len(pairs)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and pairs[order[j + 1]][0] == pairs[order[i]][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = math.fsum(r for r, (_, y) in zip(ranks, pairs, strict=True) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def balanced_accuracy_at(probs: Sequence[float | None], labels: Sequence[bool], threshold: float = 0.5) -> float | None:
    """(TPR + TNR) / 2 of the decisions ``p > threshold`` (items with p None left out); chance is 0.5."""
    kept = [(p, y) for p, y in zip(probs, labels, strict=True) if p is not None]
    if not kept:
        return None
    return detection_scores([p > threshold for p, _ in kept], [y for _, y in kept])["balanced_accuracy"]


def _norm(tok: str) -> str:
    return tok.strip().lower()


def p_yes(top: Sequence[tuple[str, float]]) -> float | None:
    """P(yes) / (P(yes) + P(no)) from the top candidates of the first reply token (delphi's normalisation).

    Every candidate whose text is "yes" / "no" up to case and surrounding spaces counts ("Yes", " yes",
    "YES"...). None when neither appears among the candidates (counted as undefined by the caller).
    """
    y = math.fsum(math.exp(lp) for t, lp in top if _norm(t) == "yes")
    n = math.fsum(math.exp(lp) for t, lp in top if _norm(t) == "no")
    return y / (y + n) if y + n > 0 else None


def expected_digit(top: Sequence[tuple[str, float]], max_value: int = 9) -> float | None:
    """Expected value of the activation digit 0..``max_value`` (Bills et al.'s simulator, renormalised over
    the digit candidates among the top tokens); None when no digit is among them."""
    mass = dict.fromkeys(range(max_value + 1), 0.0)
    for t, lp in top:
        s = t.strip()
        if s.isdigit() and int(s) <= max_value:
            mass[int(s)] += math.exp(lp)
    total = math.fsum(mass.values())
    return math.fsum(k * p for k, p in mass.items()) / total if total > 0 else None


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x), without overflow."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
