"""Downstream ablation sparsity: the scoring function's exact values and the end-to-end oracles."""

from __future__ import annotations

import pytest
import torch
from conftest import HOOK, SMALL, write_native

from saebench import evaluate
from saebench.evaluators.ablation import ablation_effects, ablation_sparsity
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


def test_score_lies_in_zero_one():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(50, 4, 33, generator=g) * torch.rand(50, 1, 1, generator=g) ** 4
    d[:5] = torch.sign(torch.randn(5, 4, 33, generator=g))  # near-maximal spread
    s = ablation_sparsity(d)
    assert bool(((s > 0) & (s <= 1)).all())


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
        eval_config={"ablation": {"latents": [dead_dec, normal], "positions_per_latent": 2}},
        **SMALL,
    )
    m = run.metrics["ablation"]
    rows = {r["latent"]: r for r in run.details["ablation"]["latents"]}
    assert rows[dead_dec]["mean"] is None and rows[dead_dec]["n_no_effect"] == rows[dead_dec]["n_pairs"] == 2
    assert 0 < rows[normal]["mean"] <= 1 and rows[normal]["n_no_effect"] == 0
    assert m["n_no_effect"] == 2 and m["ablation_sparsity"] == pytest.approx(rows[normal]["mean"])
    assert m["window"] == 16

    # one pair by hand, unbatched and over the full context, matches the batched value
    z = examples.latent_acts(pipe, sae, [normal])[:, :17, 0]
    seq, pos = (int(v) for v in (z > 0).nonzero()[0])
    with torch.no_grad():
        val, none = ablation_effects(pipe, sae, torch.tensor([[seq, pos, normal]]), 16, ablation_sparsity)
        st = pipe.states()[seq : seq + 1]
        acts = pipe.acts_batch(st)
        zs = sae.encode(acts[:, 1:])
        spliced = acts.clone()
        spliced[:, 1:] = sae.decode(zs)
        ablated = spliced.clone()
        ablated[0, pos] -= zs[0, pos - 1, normal] * sae.W_dec[normal]
        base = model.suffix(st, pipe.site, spliced)
        abl = model.suffix(st, pipe.site, ablated)
    want = float(ablation_sparsity(abl[0, pos : pos + 16] - base[0, pos : pos + 16]))
    assert not bool(none[0]) and float(val[0]) == pytest.approx(want, rel=1e-3)
