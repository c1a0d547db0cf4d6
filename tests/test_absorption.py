"""Feature absorption: the absorption rules on hand-built tokens, the probe solvers against sklearn
and their optimality conditions, SAEBench's splitting rule; on the embedded model, an SAE made of
the 26 letter-probe directions shows no absorption, one where a letter is absorbed into
token-specific latents for a known set of words reports exactly those words, SAEBench's own
absorption code gives our numbers on the same activations, a second SAE costs no model pass, and
bad settings give one-line errors."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import HOOK

from saebench import SaebenchError, evaluate
from saebench.evaluators.absorption import AbsorptionConfig, alpha_vocab, make_task, score_sae
from saebench.pipeline import ActivationPipeline
from saebench.probes.absorption import (
    absorption_scores,
    fit_letter_probes,
    l1_probe,
    pos_weights,
    rank_latents,
    split_features,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
LETTERS = "abcdefghijklmnopqrstuvwxyz"
CFG = AbsorptionConfig(icl_examples=3, min_probe_f1=0.0, min_letters=1, max_k=5, min_true_positives=1)


# -- the math, on hand-built numbers ----------------------------------------------------------------


def test_absorption_rules_on_hand_built_tokens():
    e = torch.eye(4, dtype=torch.float64)
    p = e[0]  # the probe direction
    weak = 0.05 * e[0] + (1 - 0.05**2) ** 0.5 * e[1]  # cos 0.05: counts for full absorption only
    dec = torch.stack([e[0], 2 * e[0], weak, e[1], -e[0]])  # main, absorber (norm 2), weak, unaligned, opposed
    proj, cos = dec @ p, (dec @ p) / dec.norm(dim=1)
    x = torch.stack([2 * p, 2 * p, 2 * p, 2 * p, -p, 2 * p])
    z = torch.tensor(
        [
            [2.0, 0, 0, 0, 0],  # the main latent carries P: no absorption
            [0, 1.0, 0, 0, 0],  # main off, the absorber carries all of P (1 x norm 2): full absorption
            [1.0, 0.5, 0, 0, 0],  # main carries half, absorber half: fraction 1 / (1 + 1)
            [0, 0.25, 0, 0, 0],  # absorber carries a quarter < 0.4: nothing
            [0, 0, 0, 0, 0],  # P < 0: nothing
            [0, 0, 40.0, 0, 0],  # cos 0.05 latent carries all: full absorption, but not an absorber (cos < 0.1)
        ]
    )
    r = absorption_scores(x, z, p, proj, cos, main=[0])
    assert r.fraction.tolist() == pytest.approx([0.0, 1.0, 0.5, 0.0, 0.0, 0.0])
    assert r.full.tolist() == [False, True, False, False, False, True]
    assert r.top_latent[1] == 1 and r.top_latent[5] == 2


def test_split_rule_follows_f1_jumps():
    feats = [[7], [7, 3], [7, 3, 9], [7, 3, 9, 1]]
    assert split_features([0.5, 0.52, 0.9, 0.95], feats) == [7]  # stops at the first k without a jump
    assert split_features([0.2, 0.4, 0.45, 0.5], feats) == [7, 3, 9, 1]
    assert split_features([], []) == []


def test_letter_probes_equal_sklearn_balanced_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    n, d, l2 = 400, 6, 1e-2
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, d, generator=g) * 3 + 5 + F.one_hot(y, d).double()[:, :d] * 2
    probe = fit_letter_probes(x, y, 3, l2)
    mu, sigma = x.double().mean(0), float((x.double() - x.double().mean(0)).pow(2).mean().sqrt())
    xs = ((x.double() - mu) / sigma).numpy()
    pw = pos_weights(F.one_hot(y, 3).double())
    for c in range(3):
        clf = LogisticRegression(C=1 / (l2 * n), class_weight={0: 1.0, 1: float(pw[c])}, tol=1e-12, max_iter=10000)
        clf.fit(xs, (y == c).int().numpy())
        w = probe.W[c] * sigma  # back to the standardized scale sklearn saw
        assert torch.allclose(w, torch.from_numpy(clf.coef_[0]), atol=1e-4), c
        assert float(probe.b[c] + probe.W[c] @ mu) == pytest.approx(float(clf.intercept_[0]), abs=1e-4)


def test_l1_probe_meets_its_optimality_conditions_sparse_or_dense():
    g = torch.Generator().manual_seed(1)
    n, m, lam = 300, 40, 0.01
    y = torch.randint(0, 3, (n,), generator=g)
    z = torch.relu(torch.randn(n, m, generator=g) - 1.0)
    for c in range(3):  # planted: latent 10 + c fires for class c
        z[y == c, 10 + c] += 2.0
    z[:, 5] = 0.0  # a dead latent
    w, grad, it = l1_probe(z.to_sparse(), y, 3, lam, max_iter=30000, tol=1e-13)
    w_dense, _, _ = l1_probe(z, y, 3, lam, max_iter=30000, tol=1e-13)
    assert torch.allclose(w, w_dense, atol=1e-9)
    on = w != 0
    # KKT of  loss + lam |w|_1: grad = -lam sign(w) where w != 0, |grad| <= lam where w == 0
    assert float((grad[on] + lam * w[on].sign()).abs().max()) < 1e-6
    assert float(grad[~on].abs().max()) <= lam + 1e-6
    assert not bool(on[:, 5].any())
    for c in range(3):
        assert rank_latents(w[c], grad[c], 1) == [10 + c]
    # an SAE whose latents never fire on train: all weights 0, no iteration spent
    w0, g0, it0 = l1_probe(torch.zeros(n, m).to_sparse(), y, 3, lam)
    assert it0 == 0 and not bool(w0.any()) and not bool(g0.any())


# -- on the embedded model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task(model, token_set):
    """Prompts for 12 train + 6 test words of every letter, their activations and the letter probes."""
    rng = random.Random(0)
    by_letter: dict[str, list[tuple[int, str]]] = {}
    for w in alpha_vocab(model.tokenizer, model.d_vocab):
        by_letter.setdefault(w[1].strip()[0].lower(), []).append(w)
    train, test = [], []
    for letter in LETTERS:
        words = rng.sample(by_letter[letter], 18)
        train += words[:12]
        test += words[12:]
    pipe = ActivationPipeline(model, token_set, HOOK, batch_size=8, progress=False)
    return make_task(pipe, CFG, seed=0, split=(train, test))


class ProbeSAE(torch.nn.Module):
    """Latents = the 26 unit probe directions: ``encode = ReLU(x P̂ᵀ)``, ``decode = z P̂``; optionally,
    for the activations in ``absorbed`` (the words of one letter), every letter latent is off and a
    token-specific latent with decoder ``p̂_letter`` carries the letter instead."""

    def __init__(self, directions: torch.Tensor, letter: int = 0, absorbed: torch.Tensor | None = None) -> None:
        super().__init__()
        self.P = directions.float()
        self.absorbed = absorbed.float() if absorbed is not None else torch.zeros(0, directions.shape[1])
        self.letter = letter
        self.d_in = int(directions.shape[1])
        self.d_sae = 26 + self.absorbed.shape[0]
        self.dec = torch.cat([self.P, self.P[letter].expand(self.absorbed.shape[0], -1)])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        z = torch.cat([torch.relu(x @ self.P.T), torch.zeros(x.shape[0], self.absorbed.shape[0])], 1)
        if self.absorbed.shape[0]:
            hit = torch.cdist(x, self.absorbed) < 1e-3 * x.norm(dim=1, keepdim=True)
            rows, tok = hit.nonzero(as_tuple=True)
            z[rows, :26] = 0.0
            z[rows, 26 + tok] = torch.relu(x[rows] @ self.P[self.letter])
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() @ self.dec


def test_sae_of_probe_directions_has_no_absorption(task):
    sc = score_sae(task, ProbeSAE(task.probe.directions()), "probe-directions", CFG)
    scored = [r for r in sc.letters if r["scored"]]
    assert len(scored) >= 15
    for r in scored:
        assert LETTERS.index(r["letter"]) in r["main_latents"], r["letter"]  # the k-sparse probe finds its latent
        assert r["n_full_absorption"] == 0
    fractions = [v for col in sc.samples.columns["absorption_fraction"] for v in col]
    assert max(fractions) < 1e-5


def test_planted_absorption_reports_the_absorbed_words(task):
    n_train, directions = task.n_train, task.probe.directions()
    test_acts, y = task.acts[n_train:], task.labels[n_train:]
    tp = {c: ((y == c) & (task.test_scores[:, c] > 0) & (test_acts.double() @ directions[c] > 0)) for c in range(26)}
    letter = max(range(26), key=lambda c: int(tp[c].sum()))
    rows = tp[letter].nonzero().squeeze(1)
    absorbed = rows[: max(2, rows.numel() // 2)]
    sae = ProbeSAE(directions, letter, test_acts[absorbed])
    sc = score_sae(task, sae, "planted", CFG)
    row = sc.letters[letter]
    words = {task.words[n_train + int(i)][0] for i in absorbed}
    assert {a["token_id"] for a in row["absorbed"]} == words
    assert {a["latent"] for a in row["absorbed"]} == set(range(26, 26 + absorbed.numel()))
    assert all(a["share"] == pytest.approx(1.0, abs=1e-4) for a in row["absorbed"])
    assert row["n_full_absorption"] == absorbed.numel()
    assert sum(r.get("n_full_absorption", 0) for r in sc.letters) == absorbed.numel()  # no other letter
    i = sc.samples.ids.index(next(s for s in sc.samples.ids if s.startswith(LETTERS[letter] + "@")))
    assert sum(sc.samples.columns["absorption_fraction"][i]) == pytest.approx(absorbed.numel(), abs=1e-4)


def _unit_decoder_reference():
    """The reference TopK SAE in model units (act_scale folded in) with unit-norm decoder rows, the
    convention SAEBench's absorption code assumes (its contribution is ``a_i · cos(d_i, p̂)``)."""
    from saebench.loading import load_sae
    from saebench.sae import NativeSAE

    ref = load_sae("reference").sae
    s = ref.cfg.act_scale
    sae = NativeSAE(ref.cfg.model_copy(update={"act_scale": 1.0}))
    with torch.no_grad():
        sae.W_enc.copy_(ref.W_enc)
        sae.b_enc.copy_(ref.b_enc / s)
        sae.W_dec.copy_(F.normalize(ref.W_dec, dim=1))
        sae.b_dec.copy_(ref.b_dec / s)
    return sae.eval()


def test_matches_saebench_absorption_code(task, tmp_path, monkeypatch):
    """SAEBench 0.6.0's own k-sparse probing, splitting rule, absorption calculator and aggregation,
    run on our activations, probe and latent ranking, give our per-letter numbers (the ranking is the
    one deliberate difference: we solve the L1 problem exactly, SAEBench runs 50 Adam epochs)."""
    pytest.importorskip("sae_bench")
    from sae_bench.evals.absorption import feature_absorption as fa
    from sae_bench.evals.absorption import feature_absorption_calculator as fac
    from sae_bench.evals.absorption import k_sparse_probing as ksp
    from sae_bench.evals.absorption import prompting
    from sae_bench.evals.absorption.main import _aggregate_results_df
    from sae_bench.evals.absorption.probing import LinearProbe

    sae = _unit_decoder_reference()
    ours = score_sae(task, sae, "reference-unit", CFG)
    n_train, d = task.n_train, task.acts.shape[1]
    words = task.words
    train_labels = [(t, int(task.labels[i])) for i, (_, t) in enumerate(words[:n_train])]
    eval_labels = [(t, int(task.labels[n_train + i])) for i, (_, t) in enumerate(words[n_train:])]
    probe = LinearProbe(d, 26)
    with torch.no_grad():
        probe.fc.weight.copy_(task.probe.W.float())
        probe.fc.bias.copy_(task.probe.b.float())
    view = SimpleNamespace(
        encode=sae.encode,
        W_enc=sae.W_enc,
        W_dec=sae.W_dec,
        device=torch.device("cpu"),
        dtype=torch.float32,
        cfg=SimpleNamespace(d_sae=sae.d_sae),
    )
    ranked = {LETTERS.index(r["letter"]): r["ranked_latents"] for r in ours.letters if "ranked_latents" in r}

    def our_ranking(x_train, y_train, **kw):  # SAEBench's L1 probe replaced by weights that encode our ranking
        p = LinearProbe(sae.d_sae, 26)
        with torch.no_grad():
            p.fc.weight.zero_()
            for c, lat in ranked.items():
                p.fc.weight[c, lat] = torch.arange(len(lat), 0, -1, dtype=torch.float32)
        return p

    monkeypatch.setattr(ksp, "train_sparse_multi_probe", our_ranking)
    max_k = CFG.max_k
    k_probes = ksp.train_k_sparse_probes(
        view, train_labels, task.acts[:n_train], ks=list(range(1, max_k + 1)), precalc_sae_acts=True
    )
    raw = ksp.eval_probe_and_sae_k_sparse_raw_scores(view, probe, k_probes, eval_labels, task.acts[n_train:])
    meta = ksp.sae_k_sparse_metadata(view, probe, k_probes, sae_name="sae", layer=6)
    metrics_df = ksp.build_metrics_df(raw, meta, max_k_value=max_k)
    ksp.add_feature_splits_to_metrics_df(metrics_df, max_k_value=max_k, f1_jump_threshold=CFG.f1_jump)
    raw.to_parquet(tmp_path / ksp.get_sparse_probing_raw_results_filename("sae", 6), index=False)
    likely = fa.get_stats_and_likely_false_negative_tokens(metrics_df, "sae", 6, tmp_path)

    test_acts = {t: task.acts[n_train + i] for i, (_, t) in enumerate(words[n_train:])}
    suffix = CFG.prompt_template.split("{word}")[1]

    class Activations:  # SAEBench's calculator asks a model for the hook activation at the word
        tokenizer = object()

        def to_tokens(self, text):
            return torch.zeros(1, 1)

        def run_with_cache(self, prompts, names_filter):
            last = [p.split("\n")[-1][: -len(suffix)] for p in prompts]
            return None, {names_filter[0]: torch.stack([test_acts[w] for w in last])[:, None, :]}

    calc = fac.FeatureAbsorptionCalculator(
        model=Activations(),  # type: ignore[arg-type]
        icl_word_list=[t for _, t in words],
        max_icl_examples=CFG.icl_examples,
        base_template=CFG.prompt_template,
        answer_formatter=prompting.first_letter_formatter(),
        word_token_pos=-1,
        full_absorption_probe_cos_sim_threshold=fa.FULL_ABSORPTION_PROBE_COS_THRESHOLD,
        absorption_fraction_probe_cos_sim_threshold=fa.ABSORPTION_FRACTION_PROBE_COS_THRESHOLD,
        probe_projection_proportion_threshold=fa.ABSORPTION_PROBE_PROJECTION_PROPORTION_THRESHOLD,
        absorption_fraction_max_absorbing_latents=fa.ABSORPTION_FRACTION_MAX_ABSORBING_LATENTS,
    )
    agg = _aggregate_results_df(fa.calculate_projection_and_cos_sims(calc, view, probe, 6, likely)).set_index("letter")

    compared = 0
    for c, row in enumerate(ours.letters):
        letter = LETTERS[c]
        theirs = metrics_df[metrics_df["letter"] == letter].iloc[0]
        assert row["probe_f1"] == pytest.approx(theirs["f1_probe"], abs=1e-9), letter
        assert row["main_latents"] == list(theirs["split_feats"]), letter
        assert row["f1_by_k"] == pytest.approx([theirs[f"f1_sparse_sae_{k}"] for k in range(1, max_k + 1)], abs=1e-6)
        if not row["scored"]:
            assert letter not in agg.index or theirs["f1_probe"] <= CFG.min_probe_f1
            continue
        a = agg.loc[letter]
        assert row["n_probe_true_positives"] == a["num_probe_true_positives"]
        assert row["mean_absorption_fraction"] == pytest.approx(a["mean_absorption_fraction"], abs=1e-5), letter
        assert row["full_absorption_rate"] == pytest.approx(a["full_absorption_rate"], abs=1e-9), letter
        assert row["num_split_features"] == a["num_split_feats"]
        compared += 1
    assert compared >= 15


def test_second_sae_costs_no_model_pass(cache_env, model, tmp_path):
    from conftest import write_native

    a, _ = write_native(tmp_path / "a", "topk", d_sae=64, seed=1)
    b, _ = write_native(tmp_path / "b", "topk", d_sae=64, seed=2)
    c, _ = write_native(tmp_path / "c", "relu", d_sae=64, seed=3)
    cfg = {"absorption": {"n_words": 200, "icl_examples": 2, "min_probe_f1": 0.0, "min_letters": 1, "max_k": 2,
                          "min_true_positives": 1}}  # fmt: skip
    both = evaluate([str(a), str(b)], model=model, evals=["absorption"], progress=False, eval_config=cfg)
    counters = both.counters[HOOK]
    assert counters.position_forward_batches > 0 and counters.position_rows == 200  # once for both SAEs
    assert counters.prefix_batches == 0
    alone = evaluate(str(c), model=model, evals=["absorption"], progress=False, eval_config=cfg)
    assert alone.counters[HOOK].position_forward_batches == 0  # from the disk cache: SAE encodes only
    res = both.results["a"]["absorption"]
    assert res.metrics["n_words_train"] == 160 and res.metrics["n_letters_scored"] >= 1
    assert res.uncertainty["absorption_rate"]["unit"] == "letter"  # our names: our procedure
    assert not [k for k in res.metrics if k.startswith("mean_")]  # none of SAEBench's names, not even null
    assert res.details["example_prompt"].endswith(" has the first letter:")
    # random decoder rows are not unit-norm: the rule used is stated, with the norms, never switched
    rule = res.details["contribution_rule"]
    assert rule["rule"].startswith("a_i * (d_i . p)") and "not unit-norm" in rule["note"]
    assert res.details["resolution"]["absorption_rate"]["unit"] == "word"


def test_bad_settings_give_one_line_errors(model):
    for bad, match in (
        ({"prompt_template": "first letter of word:"}, "{word}"),
        ({"n_words": 2}, "n_words"),
        ({"n_words": 20, "icl_examples": 10}, "icl_examples"),
        ({"train_frac": 1.0}, "train_frac"),
    ):
        with pytest.raises(SaebenchError, match=match):
            evaluate("reference", model=model, evals=["absorption"], progress=False, eval_config={"absorption": bad})


# -- mode=saebench: SAEBench's own code end to end ---------------------------------------------------


def _small_vocab(model, per_letter: int = 10) -> tuple[list[str], int]:
    """A small alphabetic vocabulary with every letter in both splits of SAEBench's 80/20 draw:
    ``per_letter`` words per first letter, and the first seed whose split leaves none empty."""
    from saebench.evaluators.absorption_saebench import saebench_vocab
    from saebench.probes.absorption_saebench import probe_dataset

    words: dict[str, list[str]] = {c: [] for c in LETTERS}
    for w in saebench_vocab(model.tokenizer, model.d_vocab):
        c = w.strip()[0].lower()
        if len(words[c]) < per_letter:
            words[c].append(w)
    vocab = [w for c in LETTERS for w in words[c]]
    for seed in range(100):
        data = probe_dataset(vocab, "{word} has the first letter:", random.Random(seed))
        if all(set(data.labels(s).tolist()) == set(range(26)) for s in ("train", "test")):
            return vocab, seed
    raise AssertionError("no seed splits every letter into both halves")


def test_saebench_mode_equals_saebench_absorption_end_to_end(model, token_set, cache_env, tmp_path, monkeypatch):
    """SAEBench's ``run_k_sparse_probing_experiment`` and ``run_feature_absortion_experiment`` (its
    prompts, letter-probe and L1-probe Adam training, sklearn k-probes, F1-jump rule, re-prompting
    and ``a·cos`` absorption) and its aggregation, seeded and given the same vocabulary in the same
    order, give every per-letter number and every aggregate our ``mode=saebench`` gives."""
    pytest.importorskip("sae_bench", reason="sae-bench not installed")
    from crosscheck_saebench import saebench_view
    from sae_bench.evals.absorption import common, k_sparse_probing
    from sae_bench.evals.absorption import feature_absorption as fa
    from sae_bench.evals.absorption.main import _aggregate_results_df
    from test_saebench_mode import relu_sae

    from saebench.evaluators import absorption_saebench

    vocab, seed = _small_vocab(model)
    sae = relu_sae(d_sae=96)
    settings = {"mode": "saebench", "min_feats_for_eval": 1, "min_GT_probe_f1": 0.3}
    monkeypatch.setattr(absorption_saebench, "saebench_vocab", lambda tok, d: vocab)
    run = evaluate(sae, model=model, hook=HOOK, evals=["absorption"], token_set=token_set, seed=seed,
                   progress=False, eval_config={"absorption": settings}, name="s")  # fmt: skip
    ours = run.results["s"]["absorption"]
    assert ours.details["naming"]["names"] == "variant"  # settings changed: SAEBench's procedure, our names
    rule = ours.details["contribution_rule"]
    assert rule["rule"].startswith("a_i * cos") and "not unit-norm" in rule["note"]  # SAEBench's rule, stated

    monkeypatch.setattr(common, "get_alpha_tokens", lambda tok: vocab)
    monkeypatch.setattr(fa, "get_alpha_tokens", lambda tok: vocab)
    view = SimpleNamespace(encode=sae.encode, W_enc=sae.W_enc, W_dec=sae.W_dec, device=torch.device("cpu"),
                           dtype=torch.float32, cfg=SimpleNamespace(d_sae=sae.d_sae))  # fmt: skip
    state = random.getstate()
    with saebench_view(model) as ht, torch.random.fork_rng():
        lm = SimpleNamespace(tokenizer=ht.tokenizer, cfg=ht.cfg, to_tokens=ht.to_tokens,  # layers past 6: same acts
                             run_with_cache=lambda *a, **k: ht.run_with_cache(*a, stop_at_layer=7, **k))  # fmt: skip
        random.seed(seed)
        torch.manual_seed(seed)
        kw = {"model": lm, "sae": view, "layer": 6, "sae_name": "s", "max_k_value": 10, "device": "cpu",
              "prompt_template": "{word} has the first letter:", "prompt_token_pos": -6,
              "probes_dir": tmp_path / "probes"}  # fmt: skip
        metrics = k_sparse_probing.run_k_sparse_probing_experiment(
            **kw, experiment_dir=tmp_path / "ksp", precalc_k_sparse_probe_sae_acts=True, verbose=False
        )
        raw = fa.run_feature_absortion_experiment(
            **kw, experiment_dir=tmp_path / "fa", sparse_probing_experiment_dir=tmp_path / "ksp", batch_size=10
        )
    random.setstate(state)
    agg = _aggregate_results_df(raw).set_index("letter")
    rows = {r["letter"]: r for r in ours.details["letters"]}
    compared = 0
    for c in LETTERS:
        theirs = metrics[metrics["letter"] == c].iloc[0]
        assert rows[c]["probe_f1"] == pytest.approx(theirs["f1_probe"], abs=1e-9), c
        assert rows[c]["f1_by_k"] == pytest.approx([theirs[f"f1_sparse_sae_{k}"] for k in range(1, 11)], abs=1e-6), c
        assert rows[c]["main_latents"] == list(theirs["split_feats"]), c
        if rows[c].get("scored"):
            a = agg.loc[c]
            assert rows[c]["n_probe_true_positives"] == a["num_probe_true_positives"]
            assert rows[c]["mean_absorption_fraction"] == pytest.approx(a["mean_absorption_fraction"], abs=1e-9), c
            assert rows[c]["full_absorption_rate"] == pytest.approx(a["full_absorption_rate"], abs=1e-9), c
            compared += 1
    good = [c for c in LETTERS if rows[c].get("scored")]
    assert compared == len(good) >= 5
    mean = sum(agg.loc[c, "mean_absorption_fraction"] for c in good) / len(good)
    assert ours.metrics["absorption_rate"] == pytest.approx(mean, abs=1e-9)
    assert ours.metrics["num_main_latents"] == pytest.approx(
        sum(len(agg.loc[c, "split_feats"]) for c in good) / len(good)
    )
