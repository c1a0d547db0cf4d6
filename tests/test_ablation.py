"""Downstream ablation sparsity: the scoring function's exact values and the end-to-end oracles."""

from __future__ import annotations

import pytest
import torch
from conftest import HOOK, SMALL, write_native

from saebench import evaluate
from saebench.evaluators.ablation import ablation_effects, ablation_sparsity, random_directions
from saebench.pipeline import ActivationPipeline, examples


def test_single_nonzero_entry_scores_one_over_vt():
    T, V = 16, 49152
    d = torch.zeros(T, V)
    d[3, 17] = 2.5
    assert float(ablation_sparsity(d)) == 1.0 / (V * T)


def test_known_l1_l2_ratios():
    T, V = 2, 9
    d = torch.zeros(T, V)
    d[0, 0], d[0, 1] = 3.0, -4.0  # medians stay 0: L1 = 7, L2 = 5
    assert float(ablation_sparsity(d)) == pytest.approx((7 / 5) ** 2 / (V * T), rel=1e-12)
    shifted = d + torch.tensor([[1.5], [-2.0]])  # a uniform shift per position is removed by the median
    assert float(ablation_sparsity(shifted)) == pytest.approx((7 / 5) ** 2 / (V * T), rel=1e-12)
    k = torch.zeros(T, V)
    k[0, :3] = 1.0
    k[1, :2] = -1.0
    assert float(ablation_sparsity(k)) == pytest.approx(5 / (V * T), rel=1e-12)  # 5 equal entries
    assert torch.isnan(ablation_sparsity(torch.full((T, V), 0.7)))  # uniform only: no effect


def test_uniform_shift_in_float32_is_no_effect_and_does_not_change_a_sparse_score():
    """Logits shifted uniformly and subtracted in float32 differ by rounding, not exactly by a
    constant: without the rounding floor that noise scored like a real latent's effect (~0.3)."""
    g = torch.Generator().manual_seed(0)
    T, V = 4, 4096
    base = torch.randn(T, V, generator=g) * 8
    shifted = base + torch.tensor([[0.7], [-1.3], [2.1], [0.0]])
    delta = shifted - base  # float32: a constant per row plus rounding
    assert not bool((delta == delta[:, :1]).all())  # really not exactly uniform
    assert float(ablation_sparsity(delta)) > 0.1  # rounding alone would read as a dense effect
    assert torch.isnan(ablation_sparsity(delta, base))  # with the floor: no effect
    sparse = torch.zeros(T, V)
    sparse[1, 5], sparse[2, 9] = 1.0, -0.5
    want = float(ablation_sparsity(sparse))
    moved = (base + sparse + 0.9) - base
    assert float(ablation_sparsity(moved, base)) == pytest.approx(want, rel=1e-3)


def test_random_directions_have_the_requested_norms():
    norms = torch.tensor([0.0, 1.0, 3.5])
    r = random_directions(norms, 576, seed=1)
    assert torch.allclose(r.norm(dim=1), norms, atol=1e-5) and torch.equal(r, random_directions(norms, 576, seed=1))


def test_score_lies_in_zero_one():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(50, 4, 33, generator=g) * torch.rand(50, 1, 1, generator=g) ** 4
    d[:5] = torch.sign(torch.randn(5, 4, 33, generator=g))  # near-maximal spread
    s = ablation_sparsity(d)
    assert bool(((s > 0) & (s <= 1)).all())


def test_active_pairs_are_uniform_over_active_entries(model, token_set, cache_env):
    """With n at least the population, the draw is every active (context, position, latent) entry in
    the window range, each once; a smaller draw is a seeded subset of it."""
    _, sae = write_native(cache_env / "sae", arch="topk", d_sae=64)
    pipe = ActivationPipeline(model, token_set, HOOK, batch_size=4, progress=False)
    lo, hi = 1, 15
    dense = examples.latent_acts(pipe, sae, list(range(64)))[:, lo : hi + 1]  # [S, P, L]
    want = {(int(s), int(p) + lo, int(lat)) for s, p, lat in (dense > 0).nonzero().tolist()}
    every, total = examples.active_pairs(pipe, sae, 10**6, seed=0, positions=(lo, hi))
    assert total == len(want) and {tuple(t) for t in every.tolist()} == want
    some, _ = examples.active_pairs(pipe, sae, 20, seed=0, positions=(lo, hi))
    again, _ = examples.active_pairs(pipe, sae, 20, seed=0, positions=(lo, hi))
    other, _ = examples.active_pairs(pipe, sae, 20, seed=1, positions=(lo, hi))
    rows = {tuple(t) for t in some.tolist()}
    assert len(rows) == 20 and rows <= want and torch.equal(some, again) and not torch.equal(some, other)
    only, _ = examples.active_pairs(pipe, sae, 10**6, seed=0, positions=(lo, hi), latents=[5])
    assert {tuple(t) for t in only.tolist()} == {w for w in want if w[2] == 5}


def test_zero_decoder_latent_has_no_effect_and_batching_is_exact(model, token_set, cache_env):
    _, sae = write_native(cache_env / "sae", arch="topk", d_sae=64)
    pipe = ActivationPipeline(model, token_set, HOOK, batch_size=4, progress=False)
    live = (examples.fire_counts(pipe, sae) > 0).nonzero().squeeze(1).tolist()
    dead_dec, normal = live[0], live[1]
    with torch.no_grad():
        sae.W_dec[dead_dec] = 0
    run = evaluate(
        sae,
        model=model,
        hook=HOOK,
        evals=["ablation"],
        progress=False,
        eval_config={"ablation": {"latents": [dead_dec, normal], "n_pairs": 6}},
        **SMALL,
    )
    m = run.metrics["ablation"]
    det = run.details["ablation"]
    rows = {r["latent"]: r for r in det["latents"]}
    assert m["n_pairs"] == 6 and set(rows) <= {dead_dec, normal}
    if dead_dec in rows:  # a zero decoder row changes nothing: counted, never scored
        assert rows[dead_dec]["mean"] is None and rows[dead_dec]["n_no_effect"] == rows[dead_dec]["n_pairs"]
    assert 0 < rows[normal]["mean"] <= 1 and rows[normal]["n_no_effect"] == 0
    assert m["n_no_effect"] == rows.get(dead_dec, {"n_pairs": 0})["n_pairs"]
    ctx_samples = next(iter(run.results.values()))["ablation"].samples["context"]  # intervals resample whole documents
    assert ctx_samples["cluster_unit"] == "document" and len(ctx_samples["clusters"]) == len(ctx_samples["ids"])
    assert m["ablation_sparsity_active"] == pytest.approx(rows[normal]["mean"])
    assert 0 < m["ablation_sparsity_random"] <= 1 and m["window"] == 16
    scored = [p for p in det["pairs"] if p["value"] is not None]
    assert m["ablation_sparsity_minus_random"] == pytest.approx(
        sum(p["value"] - p["random"] for p in scored) / len(scored)
    )

    # one pair by hand, unbatched and over the full context, matches the batched value; so does its null
    z = examples.latent_acts(pipe, sae, [normal])[:, :17, 0]
    seq, pos = (int(v) for v in (z > 0).nonzero()[0])
    with torch.no_grad():
        val, none, null = ablation_effects(
            pipe, sae, torch.tensor([[seq, pos, normal]]), 16, ablation_sparsity, null_seed=5
        )
        st = pipe.states()[seq : seq + 1]
        acts = pipe.acts_batch(st)
        zs = sae.encode(acts[:, 1:])
        spliced = acts.clone()
        spliced[:, 1:] = sae.decode(zs)
        contrib = zs[0, pos - 1, normal] * sae.W_dec[normal]
        ablated, rand = spliced.clone(), spliced.clone()
        ablated[0, pos] -= contrib
        rand[0, pos] -= random_directions(contrib.norm()[None], contrib.numel(), 5)[0]
        base = model.suffix(st, pipe.site, spliced)
        abl = model.suffix(st, pipe.site, ablated)
        rnd = model.suffix(st, pipe.site, rand)
    b = base[0, pos : pos + 16]
    want = float(ablation_sparsity(abl[0, pos : pos + 16] - b, b))
    want_null = float(ablation_sparsity(rnd[0, pos : pos + 16] - b, b))
    assert not bool(none[0]) and float(val[0]) == pytest.approx(want, rel=1e-3)
    assert float(null[0]) == pytest.approx(want_null, rel=1e-3)
