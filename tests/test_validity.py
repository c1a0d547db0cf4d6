"""Validity on planted synthetic SAEs: the absorption and 1-D probing evaluators' own scoring code
ranks SAEs the way the ground truth does (saebench.validity; the trained-zoo figures are in
docs/groundtruth.md, from ``python benchmarks/groundtruth.py``).

The SAEs are planted, not trained (the test takes seconds): on an orthonormal dictionary, a
graded amount of the property is built in, and the ``groundtruth`` evaluator measures the truth on
the same SAEs."""

from __future__ import annotations

import torch
from conftest import planted_synthetic_sae

from saebench.evaluators.base import EvalContext
from saebench.evaluators.groundtruth import GroundTruthEvaluator
from saebench.runner import finish_metrics
from saebench.sae import NativeSAE
from saebench.synthetic import SyntheticConfig, SyntheticSource
from saebench.validity import absorption_score, absorption_task, probing_score, probing_tasks, spearman

# parents 0-3 with 10 children each (4-43), independents 44-63. Each child fires on 3% of its
# parent's tokens: a latent for it adds less than the 0.03 F1 jump that makes a main latent, which is
# where absorption hides (with 3 children at 80%, the k-sparse probe takes every child latent as a
# main latent and no absorption is seen: splitting, measured while writing this test)
ORTHO = SyntheticConfig(
    d=64,
    n_features=64,
    mean_l0=3.0,
    zipf_exponent=0.5,
    n_parents=4,
    children_per_parent=10,
    child_prob=0.3,
    n_groups=2,
    group_size=2,
    superposition=False,
)


def sae_of(source: SyntheticSource, enc: torch.Tensor, dec: torch.Tensor) -> NativeSAE:
    return planted_synthetic_sae(source, enc, dec)


def truth(sae: NativeSAE) -> dict:
    ev = GroundTruthEvaluator()
    out = ev.run(EvalContext(None, sae, "planted", "fp", 0, "quick"), ev.Config(n_tokens=16_384))  # type: ignore[arg-type]
    metrics, _, _ = finish_metrics(ev, out)
    return {**metrics, "best_cos": out.details["best_cos"]}


def absorbing(source: SyntheticSource, n_absorbed: int) -> NativeSAE:
    """The dictionary SAE where the first ``n_absorbed`` children absorb their parent: the child's
    latent reconstructs child + parent (decoder f_c + r·f_p, r the mean magnitude ratio) and the
    parent's latent is switched off whenever that child fires."""
    f = source.features
    enc, dec = f.clone(), f.clone()
    kids = [c for p in range(source.cfg.n_parents) for c in source.children_of(p)]
    for c in kids[:n_absorbed]:
        p = int(source.parent[c])
        r = float(source.magnitude_mean[p] / source.magnitude_mean[c])
        dec[c] = f[c] + r * f[p]
        enc[p] = enc[p] - 100 * f[c]
    return sae_of(source, enc, dec)


def test_absorption_score_tracks_planted_absorption() -> None:
    src = SyntheticSource(ORTHO)
    task = absorption_task(src, n_tokens=32_768, n_words=2500)
    scores, truths = [], []
    for n in (0, 10, 20, 30, 40):
        sae = absorbing(src, n)
        t = truth(sae)
        assert t["gt_absorption"] == n / 40 and t["parent_miss_alone"] == 0.0  # the truth is what was planted
        scores.append(absorption_score(task, sae, f"absorbing-{n}")["absorption_rate"])
        truths.append(t["gt_absorption_excess"])
    rho, p, k = spearman(scores, truths)
    assert k == 5 and rho is not None and p is not None
    assert rho > 0.8 and p < 0.05, (scores, truths)
    assert scores[0] < 0.02 < scores[-1]


def merged(source: SyntheticSource, features: list[int], n_merged: int) -> NativeSAE:
    """The dictionary SAE where each of ``features`` has its latent merged with the next
    ``n_merged`` independent features (encoder and decoder f_i + Σ f_j): it fires on any of them."""
    f = source.features
    enc, dec = f.clone(), f.clone()
    pool = [i for i in range(source.n_features) if source.parent[i] < 0 and i >= source.cfg.n_parents]
    for i in features:
        others = [j for j in pool if j not in features][:n_merged] if n_merged else []
        mix = f[i] + f[others].sum(0) if others else f[i]
        enc[i], dec[i] = mix, mix
    return sae_of(source, enc, dec)


def test_probing_score_tracks_how_well_a_latent_holds_the_feature() -> None:
    src = SyntheticSource(ORTHO)
    tasks = probing_tasks(src, n_tasks=6, n_train=64, n_test=64, n_tokens=32_768)
    feats = [t.feature for t in tasks]
    scores, truths = [], []
    for n in (0, 1, 2, 4, 8, 16):
        sae = merged(src, feats, n)
        t = truth(sae)
        truths.append(sum(t["best_cos"][i] for i in feats) / len(feats))
        scores.append(probing_score(tasks, sae, n_permutations=9)["probe_loss_below_floor"])
    rho, p, _ = spearman(scores, truths)
    assert truths[0] > 0.999 and truths[-1] < 0.3
    assert rho is not None and p is not None and rho > 0.8 and p < 0.05, (scores, truths)


def test_splitting_score_tracks_merged_latents_a_wider_sae_splits(tmp_path) -> None:
    from saebench.sae import save_native
    from saebench.validity import splitting_score

    src = SyntheticSource(ORTHO)
    f = src.features
    wide = tmp_path / "wide"
    save_native(sae_of(src, f, f), wide)  # one latent per feature
    scores, truths = [], []
    for n in (0, 2, 4, 8, 16):  # the narrow SAE merges the last 2n features pairwise: n latents hold two each
        rows = [f[i] for i in range(64 - 2 * n)]
        rows += [(f[64 - 2 * n + 2 * i] + f[64 - 2 * n + 2 * i + 1]) / 2**0.5 for i in range(n)]
        d = torch.stack(rows[::-1])  # reversed: never the wide SAE itself (which the evaluator skips)
        sae = sae_of(src, d, d)
        save_native(sae, tmp_path / f"narrow-{n}")
        truths.append(truth(sae)["merge_frac"])
        scores.append(splitting_score(str(tmp_path / f"narrow-{n}"), str(wide))["split_frac"])
    rho, p, _ = spearman(scores, truths)
    assert truths[0] == 0.0 and scores[0] == 0.0
    assert rho is not None and p is not None and rho > 0.8 and p < 0.05, (scores, truths)
