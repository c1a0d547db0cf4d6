"""SCR and TPP: known answers on planted activations, SAEBench's own code on the same activations,
the two ablation paths, the offline and hub data paths, and one real run on the embedded model."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch

from saebench.errors import SaebenchError
from saebench.evaluators.scr import ScrConfig, ScrEvaluator, prepare_pair, score_pair, variant_name
from saebench.evaluators.tpp import TppConfig, TppEvaluator, prepare_dataset, score_dataset
from saebench.pipeline.tasks import TaskActs
from saebench.probes.scr_tpp import SaeAblation, top_n_mask
from saebench.sae import NativeSAE, SAEConfig
from saebench.tasks import TaskUnavailable
from saebench.tasks.scr_tpp import SCR_PAIRS, TPP_DATASETS, ScrData, TppData, load_scr, load_tpp

L = 3  # tokens per synthetic example


def _ctx(sae) -> SimpleNamespace:
    return SimpleNamespace(sae=sae, sae_name="test", model=SimpleNamespace(device="cpu"))


def _native(w_enc: torch.Tensor, w_dec: torch.Tensor, arch: str = "relu", act_scale: float = 1.0, **kw) -> NativeSAE:
    d_in, d_sae = w_enc.shape
    sae = NativeSAE(SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, act_scale=act_scale, **kw))
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(w_dec)
    return sae


def synthetic_scr(n_tr: int, n_te: int, alpha: float, beta: float, d: int = 8, noise: float = 0.1, seed: int = 0):
    """Tokens ``alpha·(2a-1)·e0 + beta·(2s-1)·e1 + noise on e2..`` for intended attribute a and
    spurious attribute s; the sets are built exactly as ``load_scr`` builds them."""
    g = torch.Generator().manual_seed(seed)
    texts, acts = [], []

    def example(a: int, s: int) -> int:
        x = torch.zeros(L, d)
        x[:, 0] = alpha * (2 * a - 1)
        x[:, 1] = beta * (2 * s - 1)
        x[:, 2:] = noise * torch.randn(L, d - 2, generator=g)
        acts.append(x)
        texts.append(f"ex{len(texts)} a={a} s={s}")
        return len(texts) - 1

    sets = {}
    for split, n in (("train", n_tr), ("test", n_te)):
        q = {(a, s): [example(a, s) for _ in range((2 if a == s else 1) * n)] for a in (1, 0) for s in (1, 0)}
        sets[split] = {
            "spurious": (q[(1, 1)][:n] + q[(0, 1)][:n], q[(1, 0)][:n] + q[(0, 0)][:n]),
            "intended": (q[(1, 1)][:n] + q[(1, 0)][:n], q[(0, 1)][:n] + q[(0, 0)][:n]),
            "biased": (q[(1, 1)][: 2 * n], q[(0, 0)][: 2 * n]),
        }
    data = ScrData(SCR_PAIRS["hist_fig_politician_gender"], texts, sets, n_tr, n_te, "synthetic", [])
    ta = TaskActs(torch.cat(acts), torch.full((len(texts),), L, dtype=torch.long), "synthetic")
    return data, ta


def synthetic_tpp(n_tr: int, n_te: int, d: int = 8, noise: float = 0.5, seed: int = 0):
    """Four classes: class c's tokens are ``2·e_c + noise``; negatives as ``load_tpp`` draws them."""
    import random

    from saebench.tasks.scr_tpp import _negatives

    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    ds = TPP_DATASETS["news_class"]
    texts, acts, sets = [], [], {}
    for split, n in (("train", n_tr), ("test", n_te)):
        by_class = {}
        for ci, c in enumerate(ds.classes):
            by_class[c] = []
            for _ in range(n):
                x = noise * torch.randn(L, d, generator=g)
                x[:, ci] += 2.0
                acts.append(x)
                texts.append(f"{c} {len(texts)}")
                by_class[c].append(len(texts) - 1)
        sets[split] = {c: (by_class[c], _negatives(by_class, c, n, rng)) for c in ds.classes}
    data = TppData(ds, texts, sets, n_tr, n_te, "synthetic", [])
    return data, TaskActs(torch.cat(acts), torch.full((len(texts),), L, dtype=torch.long), "synthetic")


# -- known answers ------------------------------------------------------------------------------


def test_planted_spurious_latent_removes_the_bias_and_others_do_not():
    """The biased probe leans on the (stronger) spurious direction e1: on intended-attribute data it
    is at chance. An SAE whose latents are ±e1 removes that direction exactly when both are
    ablated, so the biased probe reaches the intended probe's accuracy: scr_dir1 = scr_metric = 1.
    An SAE whose latents live in the noise dimensions changes nothing: 0."""
    data, ta = synthetic_scr(24, 16, alpha=1.0, beta=3.0)
    cfg = ScrConfig(n_values=[1, 2, 5])
    pp = prepare_pair(data, ta, 0, cfg)
    assert pp.clean["intended_on_intended"] == 1.0 and pp.clean["spurious_on_spurious"] == 1.0
    assert pp.clean["biased_on_intended"] == pytest.approx(0.5, abs=0.1)  # it learned the spurious attribute
    d, d_sae = 8, 8
    w_enc = torch.zeros(d, d_sae)
    w_enc[1, 0], w_enc[1, 1] = 1.0, -1.0  # relu(x·e1), relu(-x·e1)
    for j in range(2, d_sae):
        w_enc[j, j] = 1.0  # noise-dimension latents
    planted = _native(w_enc, w_enc.T.clone())
    scores, row = score_pair(pp, _ctx(planted), cfg)
    assert row["scr_metric_direction"] == "dir1" and row["ablation_path"] == "linear"
    assert scores["scr_dir1_top_2"] == 1.0 and scores["scr_top_2"] == 1.0  # our names: our probes and data
    assert scores["scr_dir1_top_5"] == 1.0
    assert 0.0 < scores["scr_dir1_top_1"] < 1.0  # one sign of the direction removed: partly
    w_noise = torch.zeros(d, d_sae)
    for j in range(d_sae):
        w_noise[2 + j % (d - 2), j] = 1.0 if j < d - 2 else -1.0
    scores0, _ = score_pair(pp, _ctx(_native(w_noise, w_noise.T.clone())), cfg)
    assert scores0["scr_dir1_top_2"] == 0.0 and scores0["scr_top_5"] == 0.0


class SignedLatent(torch.nn.Module):
    """One signed linear latent ``x·v`` (decoder row v, |v| = 1) and ``d_sae - 1`` dead latents."""

    def __init__(self, v: torch.Tensor, d_sae: int = 6) -> None:
        super().__init__()
        self.d_in, self.d_sae = v.numel(), d_sae
        self.W_dec = torch.zeros(d_sae, v.numel(), dtype=torch.float64)
        self.W_dec[0] = v.double() / v.double().norm()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.zeros(*x.shape[:-1], self.d_sae, dtype=torch.float64)
        z[..., 0] = x.double() @ self.W_dec[0]
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.double() @ self.W_dec


def test_planted_probe_direction_sends_its_probe_to_chance():
    """A latent equal to class c's probe direction, ablated, leaves that probe a constant logit:
    on its balanced test set the accuracy is exactly 0.5, so intended = clean - 0.5 at every N."""
    data, ta = synthetic_tpp(16, 12)
    cfg = TppConfig(n_values=[1, 2, 5])
    pd_ = prepare_dataset(data, ta, 0, cfg)
    target = data.dataset.classes[1]
    per_class, row = score_dataset(pd_, _ctx(SignedLatent(pd_.probes[target].w)), cfg)
    for n in (1, 2, 5):
        assert row["ablated_accuracy"][target][str(n)][target] == 0.5
        assert per_class[target][f"tpp_threshold_{n}_intended_diff_only"] == pytest.approx(pd_.clean[target] - 0.5)
        others = [
            pd_.clean[o] - row["ablated_accuracy"][target][str(n)][o] for o in data.dataset.classes if o != target
        ]
        assert per_class[target][f"tpp_threshold_{n}_unintended_diff_only"] == pytest.approx(sum(others) / 3)


def test_linear_shortcut_equals_decoding_every_token_and_layer_norm_saes_decode():
    """The affine shortcut and the exact per-token ablation give the same logits (act_scale != 1,
    TopK); a layer-norm SAE's decoder is not affine in the latents, so ``auto`` decodes tokens."""
    data, ta = synthetic_tpp(8, 6, d=8)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 3, dtype=torch.float64, generator=g)
    b = torch.randn(3, dtype=torch.float64, generator=g)
    xbar = ta.acts.reshape(-1, L, 8).mean(1)
    topk = _native(torch.randn(8, 32, generator=g), torch.randn(32, 8, generator=g), "topk", act_scale=0.37, k=4)
    masks = torch.stack([top_n_mask(torch.randn(32, generator=g).abs(), n) for n in (1, 4, 10)])
    ids = list(range(0, len(data.texts), 3))

    def encode(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return topk.encode(x)

    lin = SaeAblation(topk, encode, ta.acts, ta.lengths, xbar, w, b, "auto")
    exact = SaeAblation(topk, encode, ta.acts, ta.lengths, xbar, w, b, "exact")
    assert lin.path == "linear" and exact.path == "exact"
    assert torch.allclose(lin.ablated_logits(ids, masks), exact.ablated_logits(ids, masks), atol=1e-5, rtol=1e-5)
    ln = _native(torch.randn(8, 32, generator=g), torch.randn(32, 8, generator=g), normalize_activations="layer_norm")

    def encode_ln(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ln.encode(x)

    auto = SaeAblation(ln, encode_ln, ta.acts, ta.lengths, xbar, w, b, "auto")
    assert auto.path == "exact" and "not affine" in auto.reason


# -- SAEBench's own code on the same activations ------------------------------------------------


def _bld(ta: TaskActs, ids: list[int]) -> torch.Tensor:
    return ta.acts.reshape(-1, L, ta.acts.shape[1])[torch.as_tensor(ids)].float()


def _sb_probe(probe, d: int):
    from sae_bench.evals.sparse_probing.probe_training import Probe

    p = Probe(d, torch.float32)
    with torch.no_grad():
        p.net.weight.copy_(probe.w.float()[None])
        p.net.bias.fill_(probe.b)
    return p


SB_SCR_KEYS = {
    "spurious": ("male / female", "female_data_only"),
    "intended": ("professor / nurse", "nurse_data_only"),
    "biased": ("male_professor / female_nurse", "female_nurse_data_only"),
}


def test_scr_equals_saebench_code_on_the_same_activations():
    sb = pytest.importorskip("sae_bench.evals.scr_and_tpp.main")
    from sae_bench.sae_bench_utils.activation_collection import create_meaned_model_activations

    data, ta = synthetic_scr(20, 12, alpha=1.0, beta=1.5, d=16, noise=0.8, seed=3)
    ns = [2, 5, 10, 20]
    cfg = ScrConfig(n_values=ns)
    pp = prepare_pair(data, ta, 0, cfg)
    g = torch.Generator().manual_seed(0)
    sae = _native(torch.randn(16, 64, generator=g), torch.randn(64, 16, generator=g) * 0.3, act_scale=0.5)
    ours, row = score_pair(pp, _ctx(sae), cfg)

    acts = {
        split: {
            name: _bld(ta, data.sets[split][key][i])
            for key, names in SB_SCR_KEYS.items()
            for i, name in enumerate(names)
        }
        for split in ("train", "test")
    }
    probes = {SB_SCR_KEYS[k][0]: _sb_probe(pp.probes[k], 16) for k in SB_SCR_KEYS}
    chosen = list(probes)
    clean = sb.get_probe_test_accuracy(probes, chosen, create_meaned_model_activations(acts["test"]), 500, True)
    effects = sb.get_all_node_effects_for_one_sae(sae, probes, chosen, True, acts["train"], 125)
    ablated = sb.perform_feature_ablations(probes, sae, 125, acts["test"], effects, ns, chosen, 500, True)
    theirs = sb.get_scr_plotting_dict(ablated, clean)
    assert {variant_name(k) for k in theirs} == set(ours)
    for k, v in theirs.items():
        assert ours[variant_name(k)] == pytest.approx(v, abs=1e-6), k  # SAEBench averages accuracies in float32
    assert row["clean_accuracy"]["biased_on_intended"] == pytest.approx(
        clean["male_professor / female_nurse probe on professor / nurse data"]
    )


def test_tpp_equals_saebench_code_on_the_same_activations(monkeypatch):
    sb = pytest.importorskip("sae_bench.evals.scr_and_tpp.main")
    import sae_bench.evals.sparse_probing.probe_training as pt
    from sae_bench.sae_bench_utils.activation_collection import create_meaned_model_activations

    data, ta = synthetic_tpp(16, 10, d=16, noise=1.5, seed=2)
    classes = list(data.dataset.classes)
    ns = [2, 5, 20]
    cfg = TppConfig(n_values=ns)
    pd_ = prepare_dataset(data, ta, 0, cfg)
    g = torch.Generator().manual_seed(5)
    sae = _native(torch.randn(16, 96, generator=g), torch.randn(96, 16, generator=g) * 0.3, "topk", k=12)
    per_class, _ = score_dataset(pd_, _ctx(sae), cfg)

    # SAEBench draws one-vs-rest negatives with torch.randperm; hand it ours (same draw for clean and ablated)
    position = {}
    for split in ("train", "test"):
        for c in classes:
            for j, i in enumerate(data.sets[split][c][0]):
                position[i] = (c, j)

    def fixed(all_acts, class_name, perform_scr=False):
        split = "train" if len(all_acts[class_name]) == data.n_train else "test"
        _, neg = data.sets[split][class_name]
        neg_acts = torch.stack([all_acts[position[i][0]][position[i][1]] for i in neg])
        x = torch.cat([all_acts[class_name], neg_acts])
        y = torch.cat([torch.ones(len(all_acts[class_name])), torch.zeros(len(neg))]).int()
        return x, y

    monkeypatch.setattr(pt, "prepare_probe_data", fixed)
    acts = {s: {c: _bld(ta, data.sets[s][c][0]) for c in classes} for s in ("train", "test")}
    probes = {c: _sb_probe(pd_.probes[c], 16) for c in classes}
    clean = sb.get_probe_test_accuracy(probes, classes, create_meaned_model_activations(acts["test"]), 500, False)
    effects = sb.get_all_node_effects_for_one_sae(sae, probes, classes, False, acts["train"], 125)
    ablated = sb.perform_feature_ablations(probes, sae, 125, acts["test"], effects, ns, classes, 500, False)
    overall, theirs = sb.create_tpp_plotting_dict(ablated, clean)
    for c in classes:
        assert pd_.clean[c] == pytest.approx(clean[c])
        for k, v in theirs[c].items():
            assert per_class[c][k] == pytest.approx(v, abs=1e-6), (c, k)
    for k, v in overall.items():
        assert sum(per_class[c][k] for c in classes) / len(classes) == pytest.approx(v, abs=1e-6)


# -- data ---------------------------------------------------------------------------------------


def test_offline_pairs_build_saebench_sets_from_the_quadrants():
    data = load_scr(SCR_PAIRS["hist_fig_politician_gender"], 10, 4, seed=0)
    assert data.origin.startswith("sae-probes:") and (data.n_train, data.n_test) == (10, 4)
    import pandas as pd

    from saebench.data import sae_probes_data_dir

    root = sae_probes_data_dir()

    def labels(file: str) -> dict[str, set[int]]:
        df = pd.read_csv(root / f"{file}.csv.zst")
        return df.groupby(df["prompt"].str.strip())["target"].agg(set).to_dict()

    male, pol = labels("5_hist_fig_ismale"), labels("7_hist_fig_ispolitician")
    for split, n in (("train", 10), ("test", 4)):
        s = data.sets[split]
        assert all(male[data.texts[i]] == {0} for i in s["spurious"][0])  # spurious positive = female
        assert all(pol[data.texts[i]] == {1} for i in s["intended"][0])
        assert all(pol[data.texts[i]] == {1} and male[data.texts[i]] == {0} for i in s["biased"][0])
        assert all(len(v) == 2 * n for pair in s.values() for v in pair)
    train = {i for p in data.sets["train"].values() for v in p for i in v}
    test = {i for p in data.sets["test"].values() for v in p for i in v}
    assert not train & test
    big = load_scr(SCR_PAIRS["hist_fig_politician_gender"], 1000, 250, seed=0)
    assert big.n_train + big.n_test == 71 and big.notes  # the smallest quadrant caps the sizes, with a note
    tpp = load_tpp(TPP_DATASETS["news_class"], 6, 4, seed=0)
    for pos, neg in tpp.sets["test"].values():
        assert len(pos) == len(neg) == 4 and not set(pos) & set(neg)


def test_saebench_datasets_load_from_the_local_layout(tmp_path):
    """The variant on SAEBench's Bias in Bios, read from the documented local layout (a CSV per
    split under ``DATA_DIR/LabHC/bias_in_bios/``); without it or the hub the pair is unavailable."""
    import random

    r = random.Random(0)
    folder = tmp_path / "LabHC" / "bias_in_bios"
    folder.mkdir(parents=True)
    for split, n in (("train", 240), ("test", 120)):
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["hard_text", "profession", "gender"])
            for i in range(n):
                p, g = r.choice([21, 13, 0, 1, 2, 6, 9]), r.choice([0, 1])
                w.writerow([f"{split} {i}: {'she' if g else 'he'} is a {p}", p, g])
    scr = load_scr(SCR_PAIRS["bias_in_bios_professor_nurse"], 4, 2, 0, saebench_data=True, data_dir=str(tmp_path))
    assert scr.origin == "saebench-data:LabHC/bias_in_bios" and (scr.n_train, scr.n_test) == (4, 2)
    assert all(" 21" in scr.texts[i] and "she" not in scr.texts[i] for i in scr.sets["train"]["biased"][0])
    assert all(t.startswith("train") for t in [scr.texts[i] for p in scr.sets["train"].values() for v in p for i in v])
    tpp = load_tpp(TPP_DATASETS["bias_in_bios_set1"], 6, 2, 0, saebench_data=True, data_dir=str(tmp_path))
    pos = [tpp.texts[i] for i in tpp.sets["train"]["accountant"][0]]
    assert len(pos) == 6 and sum("she" in t for t in pos) == 3  # balanced by gender, as SAEBench
    with pytest.raises(TaskUnavailable, match="data=saebench"):
        load_scr(SCR_PAIRS["bias_in_bios_professor_nurse"], 4, 2, 0)
    with pytest.raises(TaskUnavailable, match="missing LabHC/bias_in_bios"):
        load_scr(SCR_PAIRS["bias_in_bios_professor_nurse"], 4, 2, 0, saebench_data=True, data_dir=str(tmp_path / "x"))


def test_bad_settings_are_one_line_errors():
    with pytest.raises(SaebenchError, match="n_values"):
        ScrEvaluator().preflight(ScrConfig(n_values=[0]))
    with pytest.raises(SaebenchError, match="probe_cs"):
        TppEvaluator().preflight(TppConfig(probe_cs=[-1.0]))
    from saebench.tasks.scr_tpp import select_names

    with pytest.raises(SaebenchError, match="no dataset matches nope"):
        select_names(SCR_PAIRS, ["nope"], [])
    with pytest.raises(SaebenchError, match="cannot ablate"):
        top_n_mask(torch.ones(4), 5)


# -- the embedded model, end to end --------------------------------------------------------------


def test_scr_and_tpp_run_on_the_model_and_a_second_sae_costs_no_model_pass(model, token_set, cache_env, tmp_path):
    from conftest import HOOK, write_native

    from saebench.runner import evaluate

    sae_a, _ = write_native(tmp_path / "a", "topk", d_sae=64, seed=1)
    sae_b, _ = write_native(tmp_path / "b", "relu", d_sae=64, seed=2)
    conf = {
        "scr": {"pairs": ["hist_fig_politician_gender", "reviews_yelp_movie"], "n_train": 8, "n_test": 4,
                "max_tokens": 12, "n_values": [2, 20]},
        "tpp": {"n_train": 6, "n_test": 4, "max_tokens": 12, "n_values": [2, 20]},
    }  # fmt: skip
    run = evaluate([str(sae_a), str(sae_b)], model=model, hook=HOOK, evals=["scr", "tpp"], token_set=token_set,
                   eval_config=conf, progress=False, name=["a", "b"])  # fmt: skip
    passes = run.counters[HOOK].task_forward_batches
    assert passes > 0
    for name in ("a", "b"):
        scr, tpp = run.results[name]["scr"], run.results[name]["tpp"]
        assert scr.metrics["n_pairs_scored"] == 2 and tpp.metrics["n_classes_scored"] == 4
        assert math.isfinite(scr.metrics["scr_top_20"]) and scr.uncertainty["scr_top_20"]["n"] == 2
        assert tpp.uncertainty["tpp_top_20"]["n"] == 4
        assert scr.metrics["scr_top_5"] is None  # not in n_values: undefined, never NaN
        # a variant carries none of SAEBench's names (not even as null)
        assert not [k for k in (*scr.metrics, *tpp.metrics) if "threshold" in k]
        assert scr.details["naming"]["names"] == "variant" and scr.details["resolution"]["scr_top_20"]["unit"] == "text"
        # every model pass was shared: both SAEs report the same passes, and the hook made no more
        assert scr.details["model_forward_batches"] + tpp.details["model_forward_batches"] == passes
    assert run.results["a"]["tpp"].samples["class"]["ids"] == run.results["b"]["tpp"].samples["class"]["ids"]


def test_board_marks_columns_one_text_can_move():
    """A result whose ``details.resolution`` says one unit moves the headline by its minimum effect or
    more gets its column marked on the board, with the reason under the table."""
    from saebench.leaderboard import render
    from saebench.results import Result, SAERecord

    def result(name: str, resolves: bool) -> Result:
        why = f"one text moves scr_top_20 by up to {0.01 if resolves else 0.12} over 3 pairs"
        entry = {"metric": "scr_top_20", "unit": "text", "step_max": 0.01 if resolves else 0.12, "resolves": resolves,
                 "why": why}  # fmt: skip
        sae = SAERecord(name=name, source="native", architecture="topk", d_in=576, d_sae=64, fingerprint=name)
        return Result(evaluator="scr", run_key=name, sae=sae, metrics={"scr_top_20": 0.2},
                      config={"model": "m", "hook": "h", "profile": "quick", "seed": 0},
                      details={"resolution": {"scr_top_20": entry}})  # fmt: skip

    assert "⚠" not in render([result("a", True)])
    board = render([result("a", True), result("b", False)])
    assert "SCR top-20 ↑ ⚠" in board
    assert "not resolved at this profile: one text moves scr_top_20 by up to 0.12" in board
