"""sae_probes: the batched probe engine against sklearn and sae-probes' own ``find_best_reg``, the
planted-latent oracle, the registry and regime samples, and a model run with shared passes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saebench.errors import SaebenchError
from saebench.evaluators.sae_probes import (
    PreparedDataset,
    SaeProbesConfig,
    SaeProbesEvaluator,
    dataset_columns,
    score_dataset,
)
from saebench.probes.ksparse import cv_splits, fit_cv, fit_logistic, mean_act_normalize, rank_latents
from saebench.tasks.sae_probes import OOD_DATASETS, Sample, Setting, binary_datasets, read, sample


def _data(n: int, d: int, seed: int = 0, signal: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 2 + 0.5
    y = (x[:, 0] * signal + torch.randn(n, generator=g) * 2 > 0).double()
    return x, y


def test_newton_fit_is_sklearns_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, y = _data(150, 12)
    for c in (1e-3, 1.0, 100.0):
        w, b, _ = fit_logistic(x, y, torch.ones(1, 150), torch.tensor([1 / c]))
        ref = LogisticRegression(C=c, solver="newton-cg", tol=1e-12, max_iter=10_000).fit(x.numpy(), y.numpy())
        assert np.allclose(w[0].numpy(), ref.coef_[0], atol=1e-5) and abs(float(b[0]) - ref.intercept_[0]) < 1e-5
    # d > n: fitted in the row space of the training matrix, the same probe
    x2, y2 = _data(30, 200, seed=1)
    f = fit_cv(x2, y2, cs=(0.1,))
    ref = LogisticRegression(C=0.1, solver="newton-cg", tol=1e-12, max_iter=10_000).fit(x2.numpy(), y2.numpy())
    assert np.allclose(f.w.numpy(), ref.coef_[0], atol=1e-5)


def test_cross_validation_is_sae_probes_find_best_reg():
    """Same splits, same C, same test AUC as the package's own sklearn loop (small, moderate and
    hold-out CV regimes)."""
    ut = pytest.importorskip("sae_probes.utils_training")
    for n, d, seed in ((10, 6, 0), (60, 10, 1), (200, 8, 2)):
        x, y = _data(n + 100, d, seed)
        yn = y.numpy().astype(int)
        for (a, b), (c, e) in zip(
            cv_splits(yn[:n], 42), ut.get_splits(ut.get_cv(x[:n].numpy(), 42), x[:n].numpy(), yn[:n]), strict=True
        ):
            assert list(a) == list(c) and list(b) == list(e)
        ours = fit_cv(x[:n], y[:n], x[n:], y[n:], seed=42)
        theirs = ut.find_best_reg(x[:n].numpy(), yn[:n], x[n:].numpy(), yn[n:], seed=42)
        assert ours.c == pytest.approx(float(theirs.classifier.C))
        assert ours.test_auc == pytest.approx(theirs.metrics.test_auc, abs=2e-3)


def test_latent_ranking_is_sae_probes_mean_diff_on_normalized_latents():
    ut = pytest.importorskip("sae_probes.run_sae_evals")
    g = torch.Generator().manual_seed(0)
    z = torch.relu(torch.randn(80, 40, generator=g)) * torch.rand(40, generator=g) * 5
    y = (torch.rand(80, generator=g) > 0.5).long()
    z[y == 1, 7] += 3.0
    assert torch.allclose(mean_act_normalize(z.double()).float(), ut.mean_act_normalization(z), atol=1e-5)
    assert rank_latents(z, y)[:5].tolist() == ut.get_sorted_indices(z, y, ut.mean_act_normalization)[:5].tolist()
    assert int(rank_latents(z, y)[0]) == 7


def _synthetic_dataset(n_train: int = 48, n_test: int = 40, d: int = 24, seed: int = 0) -> PreparedDataset:
    from saebench.probes.ksparse import fit_cv as fit

    x, y = _data(n_train + n_test, d, seed, signal=1.5)
    tr, te = list(range(n_train)), list(range(n_train, n_train + n_test))
    st = Setting("normal", 0.0, tr, y[:n_train].long().tolist(), te, y[n_train:].long().tolist())
    s = Sample("synthetic", [f"t{i}" for i in range(len(y))], [st], ["0", "1"])
    f = fit(x[tr], y[:n_train], x[te], y[n_train:])
    base = [{"auc": f.test_auc, "accuracy": f.test_accuracy, "C": f.c, "val_auc": f.val_auc, "w": f.w}]
    return PreparedDataset(s, x, base, s.content_hash())


def test_planted_latent_on_the_baseline_direction_makes_the_1_sparse_probe_match_the_baseline():
    """Latent 0 is the residual probe's own decision direction (shifted positive); the others are
    constant (they carry nothing). The ranking picks latent 0 and a 1-D probe on it orders the test
    texts exactly as the baseline does: identical AUC."""
    pd_ = _synthetic_dataset()
    w = pd_.baseline[0].pop("w")
    proj = pd_.x.double() @ w
    z = torch.cat([(proj - proj.min() + 0.1)[:, None], torch.full((len(proj), 63), 1e-3, dtype=torch.float64)], 1)
    rows = score_dataset(pd_, z.float(), SaeProbesConfig(ks=[1, 16], regime_ks=[16]), seed=0)
    assert rows[0]["sae"]["1"]["latents"][0] == 0
    assert rows[0]["sae"]["1"]["auc"] == pytest.approx(rows[0]["baseline"]["auc"], abs=1e-12)
    cols = dataset_columns(rows, 16)
    assert cols["gap_normal"] == pytest.approx(cols["sae_normal"] - cols["base_normal"])
    assert cols["gap_scarcity"] is None  # no scarcity point in this sample: undefined, never NaN
    # latents that carry nothing about the label: the 1-sparse probe is near chance
    noise = torch.rand(len(proj), 8, generator=torch.Generator().manual_seed(9))
    rows0 = score_dataset(pd_, noise, SaeProbesConfig(ks=[1], regime_ks=[1], headline_k=1), 0)
    assert abs(rows0[0]["sae"]["1"]["auc"] - 0.5) < 0.2 < rows[0]["baseline"]["auc"] - 0.5


def test_registry_has_the_113_binary_datasets_and_their_ood_files():
    tags = binary_datasets()
    assert len(tags) == 113 and len(set(tags)) == 113
    assert set(OOD_DATASETS) <= set(tags)
    texts, y, values = read("90_glue_qnli", ood=True)
    assert values == ["1", "not_entailment"] and sum(y) > 0  # LabelEncoder: the larger value is class 1
    _, y_cola, v_cola = read("87_glue_cola")
    assert v_cola == ["0", "1"] and set(y_cola) == {0, 1}


def test_regime_samples_follow_the_paper():
    s = sample("5_hist_fig_ismale", 32, 20, [4, 9], [0.1, 0.75], 20, [0.25], 30, seed=0)
    by = {(st.regime, st.point): st for st in s.settings}
    normal = by[("normal", 0.0)]
    assert len(normal.train) == 32 and sum(normal.y_train) == 16 and sum(normal.y_test) == 10
    assert not set(normal.train) & set(normal.test)
    assert sum(by[("scarcity", 9.0)].y_train) == 5 and len(by[("scarcity", 4.0)].train) == 4  # ceil(n/2) positives
    assert sum(by[("imbalance", 0.1)].y_train) == 2 and sum(by[("imbalance", 0.75)].y_train) == 15
    noisy = by[("label_noise", 0.25)]
    assert noisy.train == normal.train and sum(a != b for a, b in zip(noisy.y_train, normal.y_train, strict=True)) == 8
    ood = by[("covariate_shift", 0.0)]
    ood_texts = set(read("5_hist_fig_ismale", ood=True)[0])
    assert len(ood.test) == 30 and all(s.texts[i] in ood_texts for i in ood.test) and ood.train == normal.train
    assert len(s.texts) < 32 + 20 + 30 + 20 + 13  # one training pool serves every regime


def test_bad_settings_are_one_line_errors():
    with pytest.raises(SaebenchError, match="headline_k"):
        SaeProbesEvaluator().preflight(SaeProbesConfig(ks=[1, 2], regime_ks=[16]))
    with pytest.raises(SaebenchError, match="imbalance_fracs"):
        SaeProbesEvaluator().preflight(SaeProbesConfig(imbalance_fracs=[1.5]))
    from saebench.tasks.sae_probes import select

    with pytest.raises(SaebenchError, match="no sae-probes dataset matches"):
        select(["no_such_dataset"], [])
    assert select(["hist_fig_is*"], []) == ["5_hist_fig_ismale", "6_hist_fig_isamerican", "7_hist_fig_ispolitician"]


def test_last_token_activations_are_the_last_rows_of_the_task_pass(model, token_set, cache_env):
    from conftest import HOOK, SMALL

    from saebench.pipeline import ActivationPipeline
    from saebench.pipeline.last_tokens import last_token_activations
    from saebench.pipeline.tasks import task_activations

    texts = ["Abraham Lincoln", "the quick brown fox jumps over the lazy dog again and again", "x"]
    pipe = ActivationPipeline(model, token_set, HOOK, SMALL["batch_size"], progress=False)
    last = last_token_activations(pipe, {"t": texts}, 8)["t"]
    full = task_activations(pipe, {"t": texts}, 8)["t"]
    ends = full.lengths.cumsum(0) - 1
    assert torch.allclose(last, full.acts[ends], atol=1e-5)
    before = pipe.counters.task_forward_batches
    again = ActivationPipeline(model, token_set, HOOK, SMALL["batch_size"], progress=False)
    assert torch.equal(last_token_activations(again, {"t": texts}, 8)["t"], last)  # from the disk cache
    assert again.counters.task_forward_batches == 0 and before > 0


def test_sae_probes_runs_on_the_model_and_a_second_sae_costs_no_model_pass(model, token_set, cache_env, tmp_path):
    from conftest import HOOK, write_native

    from saebench.runner import evaluate

    sae_a, _ = write_native(tmp_path / "a", "topk", d_sae=64, seed=1)
    sae_b, _ = write_native(tmp_path / "b", "relu", d_sae=64, seed=2)
    conf = {"sae_probes": {"datasets": ["5_hist_fig_ismale", "7_hist_fig_ispolitician"], "n_train": 16,
                           "n_test": 12, "scarcity_sizes": [4], "imbalance_fracs": [0.25], "n_imbalance": 12,
                           "noise_fracs": [0.25], "ood_max": 12, "ks": [1, 4], "regime_ks": [4], "headline_k": 4,
                           "max_tokens": 12}}  # fmt: skip
    run = evaluate([str(sae_a), str(sae_b)], model=model, hook=HOOK, evals=["sae_probes"], token_set=token_set,
                   eval_config=conf, progress=False, name=["a", "b"])  # fmt: skip
    passes = run.counters[HOOK].task_forward_batches
    assert passes > 0
    for name in ("a", "b"):
        r = run.results[name]["sae_probes"]
        assert r.metrics["n_datasets_scored"] == 2 and r.details["model_forward_batches"] == passes
        for regime in ("normal", "scarcity", "imbalance", "label_noise", "covariate_shift"):
            v = r.metrics[f"auc_gap_{regime}"]
            assert math.isfinite(v) and -1 <= v <= 1 and r.uncertainty[f"auc_gap_{regime}"]["n"] == 2
            assert v == pytest.approx(r.metrics[f"sae_auc_{regime}"] - r.metrics[f"baseline_auc_{regime}"])
    a, b = run.results["a"]["sae_probes"], run.results["b"]["sae_probes"]
    assert a.metrics["baseline_auc_normal"] == b.metrics["baseline_auc_normal"]  # SAE-independent, computed once
    # mean pooling (an option for models whose last token carries little): the same protocol on token means
    conf["sae_probes"]["pooling"] = "mean"
    mean = evaluate(str(sae_a), model=model, hook=HOOK, evals=["sae_probes"], token_set=token_set, eval_config=conf,
                    progress=False, name="a").results["a"]["sae_probes"]  # fmt: skip
    assert mean.details["pooling"].startswith("mean") and math.isfinite(mean.metrics["auc_gap_normal"])
    assert mean.metrics["baseline_auc_normal"] != a.metrics["baseline_auc_normal"]
