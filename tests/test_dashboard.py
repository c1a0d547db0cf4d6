"""The dashboard evaluator (``--evals dashboard``): windows, histogram and logit lens at unit scale,
then a planted token detector on the embedded model, and the latent sample coinciding with n2g's."""

from __future__ import annotations

import types

import pytest
import torch
from conftest import HOOK, SMALL, write_native

from saebench import evaluate
from saebench.compare import compare
from saebench.errors import SaebenchError
from saebench.evaluators.dashboard import histogram, top_windows
from saebench.leaderboard import render
from saebench.models import SubjectModel

SIZES = {"tokens": 1024, "ctx_len": 32, "batch_size": 8}


# -- model-free --------------------------------------------------------------------------------


def test_top_windows_never_overlap_within_a_context_and_skip_the_bos():
    # (context, position, activation), largest first: the two next to the maximum would repeat its window
    fires = torch.tensor([[0, 10, 5.0], [0, 11, 4.0], [0, 9, 3.0], [1, 2, 2.5], [0, 30, 2.0], [2, 5, 1.0]])
    got = top_windows(fires, k=3, left=4, right=2, ctx_len=32)
    assert got == [(0, 10, 6, 12), (1, 2, 1, 4), (0, 30, 26, 31)]  # BOS (position 0) and the end cut off
    assert len(top_windows(fires, k=10, left=4, right=2, ctx_len=32)) == 4


def test_histogram_counts_firings_in_equal_bins_up_to_the_maximum():
    h = histogram(torch.tensor([0.5, 1.0, 1.5, 4.0, 4.0]), n_bins=4)
    assert h["edges"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert h["counts"] == [1, 2, 0, 2]  # the maximum falls in the last bin
    assert histogram(torch.tensor([]), 4) == {"edges": [], "counts": []}


def test_logit_lens_folds_the_norm_gain_and_centres_only_layernorm():
    w_u = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]])  # d_model 2, vocab 3
    gain = torch.tensor([3.0, 0.5])
    tl = types.SimpleNamespace(W_U=w_u, ln_final=types.SimpleNamespace(w=gain), cfg=types.SimpleNamespace())
    d = torch.tensor([[1.0, 1.0]])

    def lens(x: torch.Tensor) -> torch.Tensor:  # SubjectModel.logit_lens on a stand-in model
        return SubjectModel.logit_lens(types.SimpleNamespace(model=tl), x)  # type: ignore[arg-type]

    tl.cfg.normalization_type = "RMS"
    rms = lens(d)
    assert rms.tolist() == [[3.0, 1.0, -2.5]]  # (d * gain) @ W_U: no 1/RMS scale, no bias
    tl.cfg.normalization_type = "LN"
    assert lens(d).tolist() == [[0.0, 0.0, 0.0]]  # centred: d - mean = 0


# -- on the embedded model -----------------------------------------------------------------------


class TokenDetector(torch.nn.Module):
    """Latent 0 fires (1.0) exactly where the hook input is the embedding of one token; latent 1
    never fires; decode writes latent 0's activation times a decoder row chosen by the test."""

    def __init__(self, embedding: torch.Tensor, row: torch.Tensor) -> None:
        super().__init__()
        self.d_in, self.d_sae = embedding.numel(), 2
        self.register_buffer("e", embedding.clone())
        self.register_buffer("row", row.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        hit = ((x - self.e).abs().amax(-1) == 0).to(x.dtype)
        return torch.stack([hit, torch.zeros_like(hit)], -1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z[..., :1] * self.row + 0.25  # a decoder bias, which the decoder row leaves out


def test_planted_token_detector_shows_its_token_and_its_decoder_rows_logits(model, cache_env):
    tok = model.tokenize(" the")[0]
    row = torch.randn(576, generator=torch.Generator().manual_seed(3))
    sae = TokenDetector(model.model.W_E[tok].detach(), row)
    run = evaluate(
        sae,
        model=model,
        hook="blocks.0.hook_resid_pre",
        evals=["dashboard"],
        progress=False,
        eval_config={
            "dashboard": {"latents": [0, 1], "n_contexts": 4, "n_logit_tokens": 5, "n2g_settings": {"n_tokens": None}}
        },
        **SIZES,
    )
    m, lats = run.metrics["dashboard"], run.details["dashboard"]["latents"]
    assert m["n_latents"] == 2 and m["n_latents_silent"] == 1
    det, silent = lats
    assert det["n_fire"] > 4 and det["max_act"] == 1.0
    assert len(det["contexts"]) == 4
    for c in det["contexts"]:  # every shown token it fires on is the planted token, and each shows one
        assert {t for t, a in zip(c["tokens"], c["acts"], strict=True) if a} == {" the"}
        assert all(a in (0, 1.0) for a in c["acts"])
        assert all(t != " the" for t, a in zip(c["tokens"], c["acts"], strict=True) if not a)
    assert det["histogram"]["counts"][-1] == det["n_fire"] and sum(det["histogram"]["counts"]) == det["n_fire"]
    # promoted / suppressed = the top / bottom of (row * final-norm gain) @ W_U
    tl = model.model
    lens = (row * tl.ln_final.w.detach().float()) @ tl.W_U.detach().float()
    want_up = [model.tokenizer.decode([int(i)]) for i in lens.topk(5).indices]
    want_down = [model.tokenizer.decode([int(i)]) for i in lens.topk(5, largest=False).indices]
    assert det["promoted"]["tokens"] == want_up and det["suppressed"]["tokens"] == want_down
    assert det["promoted"]["logits"][0] == pytest.approx(float(lens.max()), rel=1e-3)
    assert silent["n_fire"] == 0 and silent["contexts"] == [] and silent["histogram"]["counts"] == []


def test_the_default_sample_is_n2gs_and_bad_latents_are_refused(model, tmp_path, cache_env):
    _, sae = write_native(tmp_path / "sae", arch="topk", d_sae=64)
    n2g_cfg = {"n_latents": 6, "n_top": 2, "n_random": 1, "max_prune_len": 4, "n_tokens": 1024}
    run = evaluate(
        sae,
        model=model,
        hook=HOOK,
        evals=["n2g", "dashboard"],
        progress=False,
        out=tmp_path / "out",
        eval_config={"n2g": n2g_cfg, "dashboard": {"n2g_settings": n2g_cfg, "autointerp_settings": {"n_latents": 3}}},
        **SMALL,
    )
    n2g_ids = [r["latent"] for r in run.details["n2g"]["latents"]]
    rows = run.details["dashboard"]["latents"]
    assert n2g_ids and [r["latent"] for r in rows if "n2g" in r["sampled_by"]] == n2g_ids
    assert run.metrics["dashboard"]["n_latents_autointerp"] == 3
    assert all(r["contexts"] and len(r["promoted"]["tokens"]) == 10 for r in rows)
    # no headline metric: the markdown board is the same with and without the dashboard's result
    got = next(iter(run.results.values()))
    assert render([got["n2g"]]) == render([got["n2g"], got["dashboard"]])
    same = compare([tmp_path / "out"], [tmp_path / "out"])  # the gate lists it and never fails on it
    assert {(r.metric, r.verdict) for r in same.rows if r.evaluator == "dashboard"} == {
        (m, "same")
        for m in ("n_latents", "n_latents_n2g", "n_latents_autointerp", "n_latents_silent", "n_tokens_scanned")
    }
    with pytest.raises(SaebenchError, match="outside 0..63"):
        evaluate(sae, model=model, hook=HOOK, evals=["dashboard"], progress=False,
                 eval_config={"dashboard": {"latents": [64]}}, **SMALL)  # fmt: skip
