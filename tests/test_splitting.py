"""Splitting and decoder geometry: a permuted copy matches perfectly, a planted split and planted
novel latents are counted exactly, chunked similarities equal the dense ones, SAEBench's own
max-cosine code agrees, and bad references give one-line errors."""

from __future__ import annotations

import pytest
import torch
from conftest import HOOK, write_native

from saebench import SaebenchError, evaluate
from saebench.probes.geometry import decoder_directions, max_cos, unit_rows
from saebench.sae import NativeSAE, SAEConfig, save_native

D_IN = 576


def _sae(w_dec: torch.Tensor, seed: int = 0, act_scale: float = 1.0) -> NativeSAE:
    """A ReLU SAE with the given decoder rows (encoder = their transpose, random biases)."""
    g = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(
        architecture="relu",
        d_in=D_IN,
        d_sae=w_dec.shape[0],
        hook_name=HOOK,
        model_name="smollm2-135m",
        act_scale=act_scale,
    )
    sae = NativeSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        sae.b_enc.copy_(torch.randn(w_dec.shape[0], generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(D_IN, generator=g))
    return sae


def _split_metrics(run, name: str) -> dict:
    return run.results[name]["splitting"].metrics


def test_permuted_copy_gives_mmcs_one_and_no_splits(tmp_path, model):
    path, sae = write_native(tmp_path / "a", "topk", d_sae=96, seed=3)
    perm = torch.randperm(96, generator=torch.Generator().manual_seed(1))
    copy = NativeSAE(sae.cfg)
    with torch.no_grad():
        for name in ("W_enc",):
            getattr(copy, name).copy_(getattr(sae, name)[:, perm])
        for name in ("b_enc", "W_dec"):
            getattr(copy, name).copy_(getattr(sae, name)[perm])
        copy.b_dec.copy_(sae.b_dec)
    copy_path = save_native(copy, tmp_path / "b")
    refs = [str(path), str(copy_path)]  # the evaluated SAE itself is listed too: it is skipped
    run = evaluate(
        str(path), model=model, evals=["splitting"], progress=False, eval_config={"splitting": {"reference": refs}}
    )
    m = _split_metrics(run, "a")
    assert m["mmcs_parent"] == pytest.approx(1.0, abs=1e-6) and m["mmcs_child"] == pytest.approx(1.0, abs=1e-6)
    assert m["split_frac"] == 0 and m["novel_frac"] == 0 and m["absent_frac"] == 0
    assert m["children_per_latent"] == 1 and m["n_references"] == 1
    res = run.results["a"]["splitting"]
    assert [r["role"] for r in res.details["references"]] == ["parent and child"]
    assert res.uncertainty["average_max_decoder_cosine_sim"]["n"] == 96  # units: latents, with intervals
    assert run.counters[HOOK].prefix_batches == 0 and run.counters[HOOK].position_forward_batches == 0


def test_planted_split_and_novel_latents_are_counted(tmp_path, model):
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D_IN, 64, generator=g))  # orthonormal directions
    parents = q[:, :16].T.contiguous()  # 16 parent latents
    # children: latent 0 splits into two (cos 0.8 with it), 1..15 copied, 4 novel orthogonal directions
    kids = [0.8 * parents[0] + 0.6 * q[:, 40], 0.8 * parents[0] - 0.6 * q[:, 40], *parents[1:], *q[:, 50:54].T]
    child = torch.stack(kids)
    save_native(_sae(parents, act_scale=0.5), tmp_path / "narrow")
    save_native(_sae(child, seed=1), tmp_path / "wide")
    refs = [str(tmp_path / "narrow"), str(tmp_path / "wide")]
    run = evaluate(
        refs, model=model, evals=["splitting"], progress=False, eval_config={"splitting": {"reference": refs}}
    )
    narrow, wide = _split_metrics(run, "narrow"), _split_metrics(run, "wide")
    assert narrow["split_frac"] == pytest.approx(1 / 16) and narrow["absent_frac"] == 0
    assert narrow["children_per_latent"] == pytest.approx(17 / 16)
    assert narrow["mmcs_child"] == pytest.approx((0.8 + 15) / 16, abs=1e-5) and narrow["novel_frac"] is None
    assert wide["novel_frac"] == pytest.approx(4 / 21) and wide["split_frac"] is None
    assert wide["mmcs_parent"] == pytest.approx((2 * 0.8 + 15) / 21, abs=1e-5)
    det = run.results["narrow"]["splitting"].details["child"]
    assert det["most_split"] == [{"latent": 0, "n_children": 2, "children": [0, 1]}]
    # the narrow SAE's act_scale folds into its model-unit decoder rows: directions unchanged
    assert run.results["narrow"]["splitting"].details["decoder_source"] == "W_dec x 2"


def test_chunked_max_cos_equals_dense_and_decoder_rows_follow_decode():
    g = torch.Generator().manual_seed(2)
    u, v = unit_rows(torch.randn(37, 8, generator=g)), unit_rows(torch.randn(23, 8, generator=g))
    full = u @ v.T
    best, arg = max_cos(u, v, block_elements=23)  # one row per block
    assert torch.allclose(best, full.max(1).values) and torch.equal(arg, full.argmax(1))
    self_sim = u @ u.T
    self_sim.fill_diagonal_(-2.0)
    best, arg = max_cos(u, block_elements=40)
    assert torch.allclose(best, self_sim.max(1).values) and torch.equal(arg, self_sim.argmax(1))

    class Scaled(torch.nn.Module):  # decode not of the W_dec form: per-latent scales (no shortcut)
        d_in, d_sae = 8, 5

        def __init__(self) -> None:
            super().__init__()
            self.W_dec = torch.nn.Parameter(torch.randn(5, 8, generator=g))
            self.s = torch.arange(1.0, 6.0)

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x @ self.W_dec.T)

        def decode(self, z: torch.Tensor) -> torch.Tensor:
            return (z * self.s) @ self.W_dec + 1.0

    sae = Scaled()
    rows, source = decoder_directions(sae)
    assert source == "decode" and torch.allclose(rows, sae.s[:, None] * sae.W_dec.detach(), atol=1e-5)


def test_geometry_matches_saebench_max_cosine_code():
    core = pytest.importorskip("sae_bench.evals.core.main")
    w = torch.randn(50, 16, generator=torch.Generator().manual_seed(4))
    ours, _ = max_cos(unit_rows(w), block_elements=64)
    theirs = core.calculate_max_cosine_sim(w.T, batch_size=7)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_bad_references_give_one_line_errors(tmp_path, model):
    path, _ = write_native(tmp_path / "a", "relu", d_sae=32)
    other, _ = write_native(tmp_path / "b", "relu", d_in=64, d_sae=32)
    with pytest.raises(SaebenchError, match="d_in=64"):
        evaluate(
            str(path),
            model=model,
            evals=["splitting"],
            progress=False,
            eval_config={"splitting": {"reference": [str(other)]}},
        )
    elsewhere, _ = write_native(tmp_path / "c", "relu", d_sae=32, seed=5)
    cfg = (elsewhere / "cfg.json").read_text().replace(HOOK, "blocks.3.hook_resid_post")
    (elsewhere / "cfg.json").write_text(cfg)
    with pytest.raises(SaebenchError, match="blocks.3.hook_resid_post"):
        evaluate(
            str(path),
            model=model,
            evals=["splitting"],
            progress=False,
            eval_config={"splitting": {"reference": [str(elsewhere)]}},
        )
    with pytest.raises(SaebenchError, match="threshold"):
        evaluate(
            str(path), model=model, evals=["splitting"], progress=False, eval_config={"splitting": {"threshold": 0}}
        )
