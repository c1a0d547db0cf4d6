"""Neuron2Graph explainability: engine math, the shared example pass, and the issue's oracles."""

from __future__ import annotations

import pytest
import torch
from conftest import HOOK, SMALL, write_native

from saebench import evaluate
from saebench.pipeline import ActivationPipeline, examples
from saebench.probes.n2g import WILDCARD, Example, Pattern, Trie, build_patterns, prf

SIZES = {"tokens": 1024, "ctx_len": 32, "batch_size": 8}


# -- engine (no model) ---------------------------------------------------------------------------


def test_prf_exact_values():
    truth = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
    pred = torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool)
    r = prf(truth, pred)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    none = prf(truth, torch.zeros(6, dtype=torch.bool))
    assert none["precision"] == 0.0 and none["recall"] == 0.0 and none["f1"] == 0.0
    assert prf(torch.zeros(6, dtype=torch.bool), pred)["f1"] is None


def test_trie_wildcards_and_anchor():
    bos = 0
    trie = Trie(bos)
    trie.add(Pattern(0, [5, WILDCARD, 7], anchored=False, act=1.0, norm_act=0.9))
    trie.add(Pattern(0, [8], anchored=True, act=1.0, norm_act=0.6))
    toks = torch.tensor([[0, 5, 3, 7, 8, 0, 8, 7]])
    pred = trie.predict(toks)[0].tolist()
    assert pred == pytest.approx([0, 0, 0, 0.9, 0, 0, 0.6, 0])  # 8 only right after a BOS; 7 needs 5 * 7


def test_build_patterns_prunes_wildcards_and_anchors():
    # latent fires (1.0) on token 7 when token 5 sits two places before it; the middle token is free.
    def act_fn(rows, lats):
        return torch.tensor([1.0 if len(r) >= 3 and r[-1] == 7 and r[-3] == 5 else 0.0 for r in rows])

    ex = [Example(0, [0, 9, 9, 5, 4, 7], 1.0), Example(0, [0, 5, 4, 7], 1.0)]
    pats, stats = build_patterns(ex, act_fn, pad_id=99, bos_id=0, max_len=8)
    assert pats[0].tokens == [5, WILDCARD, 7] and not pats[0].anchored
    assert pats[1].tokens == [5, WILDCARD, 7] and pats[1].anchored  # needed the whole context
    # suffixes of 1..4 tokens first: both examples are pruned there, so no longer row is run
    assert stats["rows_prune"] == 4 + 3 and stats["rows_saliency"] == 2 + 2


def test_long_patterns_are_found_in_the_second_pruning_call():
    # fires only when token 5 sits five places before the 7: needs a 6-token suffix
    def act_fn(rows, lats):
        return torch.tensor([1.0 if len(r) >= 7 and r[-1] == 7 and r[-6] == 5 else 0.0 for r in rows])

    ex = [Example(0, [0, 9, 5, 1, 2, 3, 4, 7], 1.0)]
    pats, stats = build_patterns(ex, act_fn, pad_id=99, bos_id=0, max_len=8)
    assert pats[0].tokens == [5, WILDCARD, WILDCARD, WILDCARD, WILDCARD, 7] and not pats[0].anchored
    assert stats["rows_prune"] == 4 + 3  # lengths 1-4, then 5-7 (the body has 7 tokens)


def test_stable_latent_draw_moves_only_with_eligibility():
    """Another token sample changes who is in the density band a little; the stable draw then
    changes by those latents only (a plain shuffle of the eligible list would redraw everything)."""

    class Width:
        d_sae = 500

    counts = torch.ones(500, dtype=torch.long)
    a, n = examples.choose_latents(None, Width(), None, 20, 0, "n2g", counts=counts, stable=True)
    fewer = counts.clone()
    fewer[a[0]] = 0  # one chosen latent is no longer eligible
    b, m = examples.choose_latents(None, Width(), None, 20, 0, "n2g", counts=fewer, stable=True)
    assert (n, m) == (500, 499) and len(set(a.tolist()) & set(b.tolist())) == 19
    c, _ = examples.choose_latents(None, Width(), None, 20, 1, "n2g", counts=counts, stable=True)
    assert len(set(a.tolist()) & set(c.tolist())) < 10  # another seed, another draw


# -- the shared example pass ---------------------------------------------------------------------


def test_latent_examples_match_dense_and_are_batch_independent(model, token_set, cache_env):
    _, sae = write_native(cache_env / "sae", arch="topk", d_sae=64)
    pipe = ActivationPipeline(model, token_set, HOOK, batch_size=4, progress=False)
    counts = examples.fire_counts(pipe, sae)
    lat = counts.argsort(descending=True)[[0, 5, 20]]  # live latents of different frequencies
    ex = examples.latent_examples(pipe, sae, lat, n_top=5, n_random=3, n_importance=3, seed=1, window=(4, 2))
    dense = examples.latent_acts(pipe, sae, lat)  # [n_seq, T, L]
    for li in range(3):
        col = dense[..., li]
        want = col[:, 1:].reshape(-1).topk(5).values
        assert ex.top.valid[li].all() and torch.allclose(ex.top.act[li], want, atol=1e-5)
        assert ex.n_fire[li] == int((col > 0).sum()) == counts[lat[li]]
        for es in (ex.random, ex.importance):
            s, p = es.seq[li][es.valid[li]], es.pos[li][es.valid[li]]
            assert (p >= 1).all() and (col[s, p] > 0).all()
            assert len({(int(a), int(b)) for a, b in zip(s, p, strict=True)}) == s.numel()
        j = 0
        s, p = int(ex.top.seq[li, j]), int(ex.top.pos[li, j])
        assert ex.top.tokens[li, j, 4] == token_set.tokens[s, p]
        assert ex.top.acts[li, j, 4] == pytest.approx(float(ex.top.act[li, j]), abs=1e-5)
    other = ActivationPipeline(model, token_set, HOOK, batch_size=8, progress=False)
    ex2 = examples.latent_examples(other, sae, lat, n_top=5, n_random=3, seed=1)
    assert torch.equal(ex.random.seq, ex2.random.seq) and torch.equal(ex.random.pos, ex2.random.pos)


# -- oracles on the embedded model ---------------------------------------------------------------


class TokenDetector(torch.nn.Module):
    """Latent 0 fires (1.0) exactly where the layer-0 residual is one token's embedding; latent 1 is dead."""

    def __init__(self, embedding: torch.Tensor) -> None:
        super().__init__()
        self.d_in, self.d_sae = embedding.numel(), 2
        self.register_buffer("e", embedding.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        hit = ((x - self.e).abs().amax(-1) == 0).to(x.dtype)
        return torch.stack([hit, torch.zeros_like(hit)], -1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z[..., :1] * self.e


class RandomFiring(torch.nn.Module):
    """Fires (1.0) on ~``rate`` of positions through a hash of the residual: no token pattern explains it."""

    def __init__(self, d: int = 576, rate: float = 0.2) -> None:
        super().__init__()
        self.d_in, self.d_sae, self.rate = d, 1, rate
        self.register_buffer("w", torch.randn(d, generator=torch.Generator().manual_seed(0)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.frac((x.double() @ self.w.double()).sin().abs() * 43758.5453)
        return (h < self.rate).to(x.dtype)[..., None]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*z.shape[:-1], self.d_in, dtype=z.dtype)


def test_token_detector_is_explained_by_its_token(model, cache_env):
    tok = model.tokenize(" the")[0]
    sae = TokenDetector(model.model.W_E[tok].detach())
    run = evaluate(
        sae,
        model=model,
        hook="blocks.0.hook_resid_pre",
        evals=["n2g"],
        progress=False,
        eval_config={"n2g": {"n_latents": 4, "n_top": 4, "n_random": 2, "max_prune_len": 6, "n_tokens": None}},
        **SIZES,
    )
    m = run.metrics["n2g"]
    assert m["n_latents"] == 1  # the dead latent is never sampled
    row = run.details["n2g"]["latents"][0]
    assert row["n_true"] > 0
    assert row["f1"] == pytest.approx(1.0) and m["n2g_f1"] == pytest.approx(1.0)
    shown = {p["pattern"] for p in row["explanation"]}
    assert '" the"' in shown and shown <= {'" the"', '^ " the"'}
    assert m["forward_calls"] < m["naive_forward_calls"]


def test_randomly_firing_latent_scores_near_its_base_rate(model, cache_env):
    m = evaluate(
        RandomFiring(),
        model=model,
        hook="blocks.1.hook_resid_post",
        evals=["n2g"],
        progress=False,
        eval_config={"n2g": {"n_top": 4, "n_random": 4, "max_prune_len": 6, "n_tokens": None, "max_density": 1.0}},
        **SIZES,
    ).metrics["n2g"]
    base = m["n2g_base_rate"]
    assert 0.1 < base < 0.3
    assert m["n2g_f1"] <= 1.5 * base + 0.05


def test_n2g_on_a_random_sae_runs_and_records_choices(model, tmp_path, cache_env):
    _, sae = write_native(tmp_path / "sae", arch="topk", d_sae=64)
    res = evaluate(
        sae,
        model=model,
        hook=HOOK,
        evals=["n2g"],
        progress=False,
        out=tmp_path / "out",
        eval_config={"n2g": {"n_latents": 2, "n_top": 2, "n_random": 1, "max_prune_len": 4, "n_tokens": 1024}},
        **SMALL,
    )
    m, det = res.metrics["n2g"], res.details["n2g"]
    assert m["n_latents"] == 2 and all(isinstance(r["explanation"], list) for r in det["latents"])
    cfg = next(iter(res.results.values()))["n2g"].config["evaluator_config"]
    assert cfg["firing_threshold"] == 0.5 and cfg["keep_frac"] == 0.5 and cfg["n_tokens"] == 1024
    assert det["density_band"] == [0.002, 0.1] and m["n_latents_in_band"] <= m["n_live_latents_in_examples"]
    # the run's 256 tokens grew to 1,024 from the same stream: 32 contexts, half of them held out
    assert det["n_tokens"] == 1024 and det["example_contexts"] == det["heldout_contexts"] == 16
