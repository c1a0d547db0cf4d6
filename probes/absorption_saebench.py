"""SAEBench 0.6.0's first-letter absorption procedure, replayed draw for draw (model-free parts).

SAEBench (``sae_bench/evals/absorption``) builds its prompts from Python's ``random`` and trains
its probes from torch's global generator; it seeds neither, so its number varies from run to run.
Given the seeds (``random.seed(s)``, ``torch.manual_seed(s)``) and the vocabulary in the same order
(SAEBench reads ``tokenizer.vocab``, whose order a fast tokenizer draws afresh in every process),
the functions below make the same draws in the same order and so give SAEBench's numbers:

- :func:`probe_dataset` is ``create_dataset_probe_training``: the vocabulary shuffled, split 80/20,
  one prompt per word with 10 in-context examples of its own split (``create_icl_prompt``:
  ``random.sample`` again while the word is among them);
- :func:`train_multi_probe` is ``train_multi_probe``: a ``Linear(d, n)`` (``nn.Linear``'s
  initialisation), ``BCEWithLogitsLoss(pos_weight = n_neg / n_pos)``, an optional L1 term, Adam
  with weight decay and an exponential learning-rate decay to ``end_lr``, mini-batches in the
  order a shuffling ``DataLoader`` draws them (two int64 draws per epoch: the iterator's base seed,
  then the sampler's seed of a fresh generator that permutes the rows);
- :func:`k_sparse_probe` is the sklearn probe on the top-k latents (``LogisticRegression(max_iter=
  500, class_weight="balanced")``); the F1-jump rule is :func:`saebench.probes.absorption.split_features`
  (one copy for both modes);
- :func:`word_absorption` is ``FeatureAbsorptionCalculator.calculate_absorption`` for one word:
  contributions ``a_i · cos(d_i, p̂)`` (SAEBench's rule, whatever the decoder's norms), the
  absorption fraction and the full-absorption test.

``tests/test_absorption_saebench.py`` runs SAEBench's own functions on the same inputs and holds
every number to ours.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from saebench.errors import SaebenchError

LETTERS = "abcdefghijklmnopqrstuvwxyz"
# SAEBench's feature_absorption.py constants
FULL_ABSORPTION_COS, FRACTION_COS, PROJECTION_SHARE, MAX_ABSORBERS, TOPK_FEATS = 0.025, 0.1, 0.4, 3, 10
EPS = 1e-8


def first_letter(word: str) -> str:
    """SAEBench's ``first_letter``: a space and the word's first alphabetic character, upper case."""
    chars = [c for c in word.strip() if c.isalpha()]
    if not chars:
        raise SaebenchError(f"absorption: word {word!r} has no letter")
    return " " + chars[0].upper()


def icl_prompt(word: str, examples: list[str], template: str, n_icl: int, rng: random.Random) -> str:
    """SAEBench's ``create_icl_prompt`` (shuffled examples, contamination check, separator first)."""
    for _ in range(1000):
        icl = rng.sample(examples, n_icl)
        if word not in icl:
            break
    else:
        raise SaebenchError(f"absorption: no example set without {word!r} after 1000 draws (SAEBench fails here)")
    lines = [template.format(word=ex) + first_letter(ex) for ex in icl]
    return "\n" + "\n".join(lines) + "\n" + template.format(word=word)


@dataclass
class ProbeData:
    """The letter probe's words and prompts: ``train``/``test`` words, their prompts and letters."""

    train: list[str]
    test: list[str]
    train_prompts: list[str]
    test_prompts: list[str]

    def labels(self, split: str) -> torch.Tensor:
        words = self.train if split == "train" else self.test
        return torch.tensor([LETTERS.index(first_letter(w).strip().lower()) for w in words])


def probe_dataset(vocab: list[str], template: str, rng: random.Random, n_icl: int = 10, frac: float = 0.8) -> ProbeData:
    """SAEBench's ``create_dataset_probe_training`` with one prompt per word."""
    shuffled = rng.sample(vocab, len(vocab))
    cut = int(len(shuffled) * frac)
    train, test = shuffled[:cut], shuffled[cut:]
    tr = [icl_prompt(w, train, template, n_icl, rng) for w in train]
    te = [icl_prompt(w, test, template, n_icl, rng) for w in test]
    return ProbeData(train, test, tr, te)


def _linear(d: int, n_out: int, gen: torch.Generator) -> torch.nn.Linear:
    lin = torch.nn.Linear(d, n_out, device="meta").to_empty(device="cpu")
    torch.nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=gen)
    bound = 1 / math.sqrt(d) if d > 0 else 0.0
    torch.nn.init.uniform_(lin.bias, -bound, bound, generator=gen)
    return lin


def epoch_order(n: int, gen: torch.Generator) -> torch.Tensor:
    """The row order a ``DataLoader(shuffle=True)`` epoch draws from the global generator ``gen``."""
    torch.empty((), dtype=torch.int64).random_(generator=gen)  # the iterator's base seed
    seed = int(torch.empty((), dtype=torch.int64).random_(generator=gen).item())
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def train_multi_probe(
    x: torch.Tensor,
    y1h: torch.Tensor,
    gen: torch.Generator,
    batch_size: int,
    epochs: int,
    lr: float,
    end_lr: float,
    weight_decay: float,
    l1: float | None = None,
    rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dim: int | None = None,
) -> torch.nn.Linear:
    """SAEBench's ``train_multi_probe`` (module doc). ``x`` holds the inputs, or (``rows``) the
    function that gives the inputs of a batch of row indices (latents encoded on the fly)."""
    n = len(y1h)
    d = dim if dim is not None else x.shape[1]
    y = y1h.to(torch.float32)
    probe = _linear(d, y1h.shape[1], gen)
    n_pos = y1h.sum(dim=0)
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=(len(y1h) - n_pos) / n_pos)
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=math.exp(math.log(end_lr / lr) / epochs))
    with torch.enable_grad():
        for _ in range(epochs):
            order = epoch_order(n, gen)
            for s in range(0, n, batch_size):
                idx = order[s : s + batch_size]
                xb = rows(idx) if rows is not None else x[idx]
                opt.zero_grad()
                loss = bce(probe(xb), y[idx])
                if l1 is not None:
                    loss += l1 * probe.weight.abs().sum(dim=-1).mean()
                loss.backward()
                opt.step()
            sched.step()
    return probe.eval()


def f1_score(truth: torch.Tensor, pred: torch.Tensor) -> float:
    """sklearn's binary F1 (0 where it is undefined)."""
    tp = int((truth & pred).sum())
    denom = int(truth.sum()) + int(pred.sum())
    return 2 * tp / denom if denom else 0.0


def k_sparse_probe(x_train: torch.Tensor, y_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAEBench's k-sparse probe: ``(weight [k], bias)`` float32 of ``LogisticRegression(max_iter=500,
    class_weight="balanced")`` on the selected latents."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(max_iter=500, class_weight="balanced").fit(
        x_train.float().numpy(), y_train.numpy().astype(np.int64)
    )
    return torch.tensor(fit.coef_[0]).float(), torch.tensor(fit.intercept_[0]).float()


@dataclass
class WordResult:
    """One probe true positive re-prompted and scored (SAEBench's ``WordAbsorptionResult``)."""

    absorption_fraction: float
    is_full_absorption: bool
    probe_projection: float
    top_latent: int
    top_projection: float


def word_absorption(z: torch.Tensor, proj: torch.Tensor, p: float, cos: torch.Tensor, main: list[int]) -> WordResult:
    """SAEBench's absorption of one word: ``z [d_sae]`` its latents, ``proj = z * cos`` their
    contributions along the unit probe direction (``cos [d_sae]``: each decoder row's cosine with
    it), ``p`` the activation's projection on it, ``main`` the letter's main latents."""
    m = float(torch.sum(proj[main]))
    cand = torch.ones(proj.numel(), dtype=torch.bool)
    cand[main] = False
    cand &= cos >= FRACTION_COS
    cand &= proj > 0
    top = proj[cand].topk(k=min(MAX_ABSORBERS, int(cand.sum()))).values
    a = float(torch.sum(top))
    share = a / p if p != 0 else (math.inf if a > 0 else -math.inf)  # SAEBench divides by zero here
    if m >= p or share < PROJECTION_SHARE:
        frac = 0.0
    elif m <= 0.0:
        frac = 1.0
    else:
        absorbed = min(a, p - m)
        frac = float(min(max(absorbed / (absorbed + m), 0.0), 1.0))
    t = int(proj.topk(min(TOPK_FEATS, proj.numel())).indices[0])
    top_proj = float(z[t]) * float(cos[t])
    full = all(float(z[i]) < EPS for i in main) and float(cos[t]) >= FULL_ABSORPTION_COS and p >= 0
    full = bool(full and p != 0 and top_proj / p >= PROJECTION_SHARE)
    return WordResult(frac, full, p, t, top_proj)
