"""Validity on synthetic data: do the evaluators' scores track the truth they claim to measure?

Each function here runs an evaluator's *own* scoring code (not a re-implementation) on a synthetic
source (:mod:`saebench.synthetic`), where the truth is known, so that a score from a zoo of
synthetic SAEs can be rank-correlated with its ground-truth counterpart from the ``groundtruth``
evaluator (:func:`spearman`; docs/groundtruth.md has the figures):

- **absorption** (:func:`absorption_task` + :func:`absorption_score`): the parent features play the
  letters. A token where exactly one of (at most 26) parents fires is a "word" labelled by that
  parent; the task is built exactly as ``saebench.evaluators.absorption.make_task`` builds it from
  prompt activations (``fit_letter_probes`` on the train tokens, test scores, per-letter F1), and
  ``saebench.evaluators.absorption.score_sae`` scores each SAE; its score is the evaluator's
  declared ``absorption_rate`` estimator over those samples. Truth: ``gt_absorption``.
- **probing** (:func:`probing_tasks` + :func:`probing_score`): one task per chosen independent
  feature, its label "the feature fires", balanced positives and negatives; each task is scored by
  ``saebench.probes.sparse_probing.score_task`` (the 1-D probe chosen on train, scored on test, with
  its shuffled-label noise floor) exactly as ``--evals probing`` calls it, and the SAE's score is
  the evaluator's declared ``probe_loss_below_floor`` estimator. Truth: the mean over the task
  features of the best latent's decoder cosine with the feature.
- **splitting** (:func:`splitting_score`): the splitting evaluator's own ``run`` on the narrow
  SAE of each (architecture, L0) pair with the wide one as its reference; ``split_frac`` against
  the narrow SAE's true ``merge_frac`` (latents mixing two or more true features: what a wider SAE
  can split).
- **split latents** (absorption's ``num_main_latents``, SAEBench's ``mean_num_split_features``):
  the number of main latents the k-sparse probe needs per parent. Truth: the mean number of latents
  whose best true feature is the parent (cosine >= ``split_cos``).

The tokens come from the source's ``probe`` stream (neither the SAEs' ``train`` stream nor the
``groundtruth`` evaluator's ``eval`` stream).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch

from saebench.errors import SaebenchError
from saebench.stats import Samples, estimate
from saebench.synthetic import SyntheticSource


def _metric(evaluator: Any, name: str) -> Any:
    for m in evaluator.metrics:
        if m.name == name:
            return m.estimator
    raise SaebenchError(f"evaluator {evaluator.name} declares no metric {name}")  # pragma: no cover


def _probe_stream(source: SyntheticSource, n_tokens: int, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [n, d]`` of the source's ``probe`` stream and which of the features ``cols`` fire
    ``[n, len(cols)]`` (bool), batch by batch: never ``[n, N]``."""
    xs, on = [], []
    for bt in source.batches(n_tokens, 4096, "probe"):
        xs.append(bt.x)
        on.append(bt.acts[:, cols] > 0)
    return torch.cat(xs), torch.cat(on)


# -- absorption ------------------------------------------------------------------------------------


def absorption_task(source: SyntheticSource, n_tokens: int = 65_536, n_words: int = 4000, probe_l2: float = 1e-3):  # noqa: ANN201
    """The absorption evaluator's ``Task`` on synthetic tokens: parent ``p`` is letter ``p``."""
    from saebench.evaluators.absorption import LETTERS, Task
    from saebench.probes.absorption import f1, fit_letter_probes

    n_par = min(source.cfg.n_parents, len(LETTERS))
    if n_par < 2:
        raise SaebenchError("validity: the absorption task needs a source with at least 2 parents (n_parents)")
    x, on = _probe_stream(source, n_tokens, torch.arange(n_par))
    one = on.sum(1) == 1
    rows = one.nonzero().squeeze(1)[:n_words]
    labels = on[rows].float().argmax(1)
    n_train = int(0.8 * rows.numel())
    xa = x[rows]
    probe = fit_letter_probes(xa[:n_train], labels[:n_train], len(LETTERS), probe_l2)
    scores = probe.scores(xa[n_train:])
    y_test = labels[n_train:]
    probe_f1 = [f1(scores[:, c] > 0, y_test == c) for c in range(len(LETTERS))]
    key = hashlib.sha256(f"{source.cfg.fingerprint()}|{n_tokens}|{n_words}".encode()).hexdigest()[:16]
    words = [(int(r), f"parent{int(lab)}") for r, lab in zip(rows, labels, strict=True)]
    return Task(words, labels, n_train, xa, f"synthetic:{key}", probe, scores, probe_f1, "", 0, n_par, {})


def absorption_score(task: Any, sae: Any, label: str, **overrides: Any) -> dict[str, Any]:
    """``absorption_rate`` and ``num_main_latents`` of one SAE by the absorption evaluator's own
    ``score_sae`` and metric estimators (quick-profile settings unless overridden), with the
    scored letters (parents) and their main latents."""
    from saebench.evaluators.absorption import AbsorptionConfig, AbsorptionEvaluator, score_sae

    cfg = AbsorptionConfig.for_profile("quick", **overrides)
    assert isinstance(cfg, AbsorptionConfig)
    scored = score_sae(task, sae, label, cfg)
    samples = {scored.samples.unit: scored.samples}
    ev = AbsorptionEvaluator()
    return {
        "absorption_rate": estimate(_metric(ev, "absorption_rate"), samples),
        "num_main_latents": estimate(_metric(ev, "num_main_latents"), samples),
        "letters_scored": [i for i, r in enumerate(scored.letters) if r["scored"]],
        "main_latents": {i: r.get("main_latents") for i, r in enumerate(scored.letters) if r["scored"]},
    }


# -- probing ---------------------------------------------------------------------------------------


@dataclass
class ProbeTask:
    feature: int
    x: torch.Tensor  # [n_train + n_test, d], train rows first
    y: torch.Tensor  # [n] float64 0/1
    n_train: int


def probing_tasks(
    source: SyntheticSource, n_tasks: int = 24, n_train: int = 64, n_test: int = 64, n_tokens: int = 65_536
) -> list[ProbeTask]:
    """One balanced task per chosen feature: independent (not parent, child or grouped) features at
    evenly spaced frequency ranks among those expected to fire at least ``n_train + n_test`` times
    in ``n_tokens`` (twice the positives a task needs)."""
    free = ((source.parent < 0) & (source.group < 0)).nonzero().squeeze(1)
    free = free[free >= source.cfg.n_parents]
    half = (n_train + n_test) // 2
    expected = source.firing_prob()[free] * n_tokens  # choose by the known rates, then draw the stream once
    ok = free[expected >= 2 * half]
    if ok.numel() < n_tasks:
        raise SaebenchError(
            f"validity: only {ok.numel()} features are expected to fire {2 * half} times in {n_tokens} tokens; "
            "raise n_tokens"
        )
    chosen = ok[torch.linspace(0, ok.numel() - 1, n_tasks).round().long()]
    x, on = _probe_stream(source, n_tokens, chosen)
    gen = torch.Generator().manual_seed(0)
    tasks = []
    for j, f in enumerate(chosen.tolist()):
        pos = on[:, j].nonzero().squeeze(1)
        neg = (~on[:, j]).nonzero().squeeze(1)
        if pos.numel() < half:
            raise SaebenchError(f"validity: feature {f} fired {pos.numel()} < {half} times; raise n_tokens")
        pos = pos[torch.randperm(pos.numel(), generator=gen)[:half]]
        neg = neg[torch.randperm(neg.numel(), generator=gen)[:half]]
        tr = torch.cat([pos[: n_train // 2], neg[: n_train // 2]])
        te = torch.cat([pos[n_train // 2 :], neg[n_train // 2 :]])
        y = [1.0] * (n_train // 2) + [0.0] * (n_train // 2)
        y += [1.0] * (pos.numel() - n_train // 2) + [0.0] * (neg.numel() - n_train // 2)
        tasks.append(ProbeTask(f, x[torch.cat([tr, te])], torch.tensor(y, dtype=torch.float64), tr.numel()))
    return tasks


def probing_score(tasks: list[ProbeTask], sae: Any, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """``probe_loss_below_floor`` (and ``heldout_probe_loss``) of one SAE over ``tasks``, computed by
    ``score_task`` and the probing evaluator's metric estimators at its quick-profile settings."""
    from saebench.evaluators.probing import ProbingConfig, ProbingEvaluator
    from saebench.probes.sparse_probing import score_task, task_seed

    cfg = ProbingConfig.for_profile("quick", **overrides)
    assert isinstance(cfg, ProbingConfig)
    ids: list[str] = []
    columns: dict[str, list[Any]] = {}
    for t in tasks:
        with torch.no_grad():
            z = sae.encode(t.x).float()
        name = f"feature{t.feature}"
        _, per, _ = score_task(
            z,
            t.y,
            t.n_train,
            cfg.l2,
            cfg.latent_chunk,
            cfg.top_k,
            cfg.newton_iters,
            cfg.n_permutations,
            task_seed(seed, name),
            cfg.floor_alpha,
        )
        per["noise_floor"] = (
            [a + b for a, b in zip(per["heldout_probe_loss"], per["probe_gain"], strict=True)]
            if per["probe_gain"] is not None
            else None
        )
        ids.append(name)
        for col, vals in per.items():
            columns.setdefault(col, []).append(vals)
    samples = {"task": Samples("task", ids, columns)}
    ev = ProbingEvaluator()
    return {
        "probe_loss_below_floor": estimate(_metric(ev, "probe_loss_below_floor"), samples),
        "heldout_probe_loss": estimate(_metric(ev, "heldout_probe_loss"), samples),
    }


# -- splitting -------------------------------------------------------------------------------------


class _NoModel:
    """What the splitting evaluator reads from its pipeline on a synthetic subject: the device, the
    hook its references must share, and the per-hook memo (references loaded once)."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        from saebench.synthetic import SYNTHETIC_HOOK

        self.model = SimpleNamespace(device=torch.device("cpu"))
        self.hook = SYNTHETIC_HOOK
        self._memo: dict[str, Any] = {}

    def shared(self, key: str, fn: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]


def splitting_score(sae_spec: str, reference_spec: str, **overrides: Any) -> dict[str, Any]:
    """The splitting evaluator's own ``run`` on ``sae_spec`` with ``reference_spec`` (a wider SAE of
    the same family) as its reference: ``split_frac`` (latents with >= 2 children in the wider SAE),
    ``novel_frac`` / ``mmcs_child`` where defined, via the evaluator's declared estimators."""
    from saebench.evaluators.base import EvalContext
    from saebench.evaluators.splitting import SplittingConfig, SplittingEvaluator
    from saebench.loading import load_sae

    ls = load_sae(sae_spec)
    ev = SplittingEvaluator()
    cfg = SplittingConfig(reference=[reference_spec], **overrides)
    ctx = EvalContext(_NoModel(), ls.sae, ls.name, ls.fingerprint, 0, "quick")  # type: ignore[arg-type]
    out = ev.run(ctx, cfg)
    return {
        m.name: estimate(m.estimator, out.samples)
        for m in ev.metrics
        if m.estimator is not None and m.name in ("split_frac", "mmcs_child", "children_per_latent")
    }


# -- correlation -----------------------------------------------------------------------------------


def spearman(a: list[float | None], b: list[float | None]) -> tuple[float | None, float | None, int]:
    """Spearman's rank correlation of paired values (pairs with a None left out), its two-sided
    p-value (scipy) and the number of pairs; (None, None, n) below 3 pairs or without spread."""
    from scipy.stats import spearmanr

    pairs = [(float(x), float(y)) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return None, None, len(pairs)
    res = spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
    rho, p = float(res.statistic), float(res.pvalue)
    return (rho if math.isfinite(rho) else None), (p if math.isfinite(p) else None), len(pairs)
