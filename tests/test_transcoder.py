"""Transcoders in core: known-answer oracles on the embedded model, and the one-line refusals.

A transcoder reads ``blocks.6.ln2.hook_normalized`` (or ``hook_resid_mid``) and predicts
``blocks.6.hook_mlp_out``. SmolLM2's MLP is gated (SwiGLU):
``mlp_out = (silu(x W_gate) * (x W_in) + b_in) W_out + b_out`` with x the ln2-normalised residual
times the norm's gain (``ln2.hook_normalized`` is x / RMS(x) before the gain).
:class:`ExactMLP` is exact by construction: encode returns the MLP's hidden activation (signed:
silu times a linear term) with the model's own weights and ops, decode applies ``W_out``; so its
prediction equals the output hook up to float32 rounding (the same ops on a flattened batch), and
spliced in it must give ΔCE 0, KL 0 and FVU 0. A zero transcoder must equal the zero ablation of the
*output* hook (kept positions, BOS clean), a constant-mean one the mean ablation (FVU 1), and a
skip-transcoder with silent latents must give the FVU of its linear skip map computed by hand.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL, Constant

from saebench import evaluate
from saebench.cli import main
from saebench.errors import SaebenchError
from saebench.sae import NativeSAE, SAEConfig, save_native

LAYER = 6
IN_HOOK = f"blocks.{LAYER}.ln2.hook_normalized"
OUT_HOOK = f"blocks.{LAYER}.hook_mlp_out"
VARIANTS = {"core": {"ablation_variants": True}}


class ExactMLP(torch.nn.Module):
    """The layer's true MLP as a transcoder: latents = its hidden activation (d_sae = d_mlp)."""

    def __init__(self, model, hook_in: str = IN_HOOK) -> None:
        super().__init__()
        block = model.model.blocks[LAYER]
        mlp = block.mlp
        for name in ("W_in", "W_gate", "W_out", "b_in", "b_out"):
            self.register_buffer(name, getattr(mlp, name).detach().clone())
        # ln2.hook_normalized is x / RMS(x), before the norm's gain w (fold_ln=False): the MLP reads x * w;
        # reading hook_resid_mid, the transcoder applies the block's whole RMSNorm (gain included)
        self.norm = block.ln2 if hook_in.endswith("hook_resid_mid") else None
        self.register_buffer("gain", block.ln2.w.detach().clone())
        self.d_in, self.d_sae, self.d_out = int(self.W_in.shape[0]), int(self.W_in.shape[1]), int(self.W_out.shape[1])
        self.hook_name, self.hook_name_out = hook_in, OUT_HOOK

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x) if self.norm is not None else x * self.gain
        gate = torch.nn.functional.linear(x, self.W_gate.T.contiguous())
        lin = torch.nn.functional.linear(x, self.W_in.T.contiguous())
        return torch.nn.functional.silu(gate) * lin + self.b_in

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(z, self.W_out.T.contiguous(), self.b_out)


class ConstantTranscoder(Constant):
    """decode is a fixed vector at the output hook (Constant from conftest, with the hooks named)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__(value)
        self.hook_name, self.hook_name_out = IN_HOOK, OUT_HOOK


@pytest.mark.parametrize("hook_in", [IN_HOOK, f"blocks.{LAYER}.hook_resid_mid"])
def test_a_transcoder_that_is_the_true_mlp_is_perfect(model, token_set, cache_env, hook_in):
    run = evaluate(ExactMLP(model, hook_in), model=model, **SMALL)
    m = run.metrics["core"]
    assert m["fvu"] == pytest.approx(0.0, abs=1e-9) and m["mse"] == pytest.approx(0.0, abs=1e-10)
    assert m["delta_ce"] == pytest.approx(0.0, abs=1e-5) and m["kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["ce_loss_score"] == pytest.approx(1.0, abs=1e-5) and m["cossim"] == pytest.approx(1.0, abs=1e-6)
    kept = token_set.tokens != model.bos_id
    assert m["n_tokens_reconstruction"] == int(kept.sum())
    # the latents are the MLP's hidden units (read from the input side): a gated MLP's are all non-zero
    assert m["l0"] == pytest.approx(1536, abs=1.0)
    result = run.results[next(iter(run.results))]["core"]
    assert result.config["hook"] == hook_in and result.config["hook_out"] == OUT_HOOK


def test_zero_and_mean_transcoders_equal_the_output_hooks_ablations(model, token_set, cache_env):
    from saebench.pipeline import ActivationPipeline

    zero = evaluate(ConstantTranscoder(torch.zeros(576)), model=model, eval_config=VARIANTS, **SMALL).metrics["core"]
    # the zero transcoder zeroes hook_mlp_out at the kept positions: exactly the bos-clean zero ablation there
    assert zero["ce_loss_with_sae"] == pytest.approx(zero["ce_loss_with_ablation_bos_clean"], abs=1e-9)
    assert zero["ce_loss_score_bos_clean"] == pytest.approx(0.0, abs=1e-6)
    assert zero["fvu"] > 1.0  # predicting 0 is worse than predicting the mean
    # the baselines are the output hook's: an SAE at hook_mlp_out sees the same ablated CEs
    sae = evaluate(Constant(torch.zeros(576)), model=model, hook=OUT_HOOK, eval_config=VARIANTS, **SMALL)
    s = sae.metrics["core"]
    assert "hook_out" not in sae.results[next(iter(sae.results))]["core"].config  # an SAE's config is unchanged
    for key in ("ce_loss_with_ablation", "ce_loss_with_ablation_bos_clean", "ce_loss_with_mean_ablation",
                "kl_div_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae"):  # fmt: skip
        assert zero[key] == pytest.approx(s[key], rel=1e-6, abs=1e-7), key
    # a transcoder predicting the mean output activation: FVU 1 and the mean-ablation CE
    mean = ActivationPipeline(model, token_set, OUT_HOOK, batch_size=4, progress=False).mean_act().float()
    m = evaluate(ConstantTranscoder(mean), model=model, eval_config=VARIANTS, **SMALL).metrics["core"]
    assert m["fvu"] == pytest.approx(1.0, abs=1e-5)
    assert m["ce_loss_score_mean"] == pytest.approx(0.0, abs=1e-6)


def _skip_transcoder(tmp_path, w_skip: torch.Tensor):
    """A native ReLU skip-transcoder whose latents never fire (b_enc = -1, W_enc = 0): its output is
    b_dec + x W_skip^T."""
    cfg = SAEConfig(
        architecture="relu",
        d_in=576,
        d_sae=32,
        d_out=576,
        hook_name=IN_HOOK,
        hook_name_out=OUT_HOOK,
        skip_connection=True,
        apply_b_dec_to_input=False,
        model_name="smollm2-135m",
    )
    sae = NativeSAE(cfg)
    with torch.no_grad():
        sae.b_enc.fill_(-1.0)
        sae.W_skip.copy_(w_skip)
        sae.b_dec.fill_(0.01)
    return save_native(sae, tmp_path / "skip")


def test_a_skip_transcoder_scores_its_skip_map_by_hand(model, token_set, cache_env, tmp_path):
    w = torch.randn(576, 576, generator=torch.Generator().manual_seed(0)) * 0.01
    folder = _skip_transcoder(tmp_path, w)
    m = evaluate(str(folder), model=model, **SMALL).metrics["core"]
    _, cache = model.model.run_with_cache(token_set.tokens, names_filter=[IN_HOOK, OUT_HOOK])
    keep = token_set.tokens != model.bos_id
    x, y = cache[IN_HOOK][keep].double(), cache[OUT_HOOK][keep].double()
    pred = x @ w.double().T + 0.01
    fvu = float(((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
    assert m["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert m["l0"] == 0 and m["dead_frac"] == 1.0


def _write(tmp_path, name: str, **cfg) -> str:
    base = {"architecture": "relu", "d_in": 576, "d_sae": 16, "apply_b_dec_to_input": False,
            "model_name": "smollm2-135m", "hook_name": IN_HOOK, "hook_name_out": OUT_HOOK}  # fmt: skip
    sae = NativeSAE(SAEConfig(**{**base, **cfg}))
    return str(save_native(sae, tmp_path / name))


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ({"hook_name": OUT_HOOK, "hook_name_out": IN_HOOK}, "not downstream"),
        ({"hook_name": OUT_HOOK, "hook_name_out": f"blocks.{LAYER}.hook_attn_out"}, "not downstream"),
        ({"hook_name_out": f"blocks.{LAYER - 1}.hook_mlp_out"}, "not downstream"),
        ({"d_in": 1536}, "d_in=1536"),
        ({"d_out": 1536}, "d_out=1536"),
        ({"hook_name_out": f"blocks.{LAYER}.mlp.hook_post", "d_out": 576}, "d_out=576"),
    ],
)
def test_bad_transcoders_are_one_line_errors_before_the_model_loads(tmp_path, capsys, monkeypatch, cfg, needle):
    import saebench.runner

    monkeypatch.setattr(saebench.runner, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    folder = _write(tmp_path, "bad", **cfg)
    code = main(["run", "--sae", folder, "--out", str(tmp_path / "out"), "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("ev", ["scr", "tpp", "unlearning", "ravel", "mdl"])
def test_evaluators_that_assume_one_hook_refuse_a_transcoder_before_the_model_loads(tmp_path, capsys, monkeypatch, ev):
    """SCR, TPP, unlearning, RAVEL and MDL edit or compare the activation the SAE reads: a transcoder
    gets one line naming the evaluator and the fix, exit 2, nothing loaded or written."""
    import saebench.runner

    monkeypatch.setattr(saebench.runner, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    folder = _write(tmp_path, "tc")
    out = tmp_path / "out"
    code = main(["run", "--sae", folder, "--evals", ev, "--out", str(out), "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"{ev} cannot evaluate" in lines[0] and "transcoder" in lines[0] and f"drop {ev}" in lines[0], lines[0]
    assert not list(out.rglob("*.json"))


def test_the_pipeline_refuses_a_bad_output_width_on_a_model_built_in_code(model, token_set, cache_env):
    """A model passed as an object skips the pre-load check: the pipeline refuses before any splice."""
    from saebench.pipeline import ActivationPipeline

    class Wide(ConstantTranscoder):
        d_out = 1536

    pipe = ActivationPipeline(model, token_set, IN_HOOK, batch_size=4, progress=False)
    with pytest.raises(SaebenchError, match="d_out=1536 but its output hook"):
        pipe.check_sae(Wide(torch.zeros(576)), "wide")
    with pytest.raises(SaebenchError, match="names no output hook"):
        no_hook = Constant(torch.zeros(576))
        no_hook.d_out = 1536
        pipe.check_sae(no_hook, "nohook")


def _board_result(name: str, hook: str, hook_out: str | None, fvu: float):
    from saebench.results import Result, SAERecord

    config = {"model": "m1", "hook": hook, "profile": "quick", "tokens": 8192, "ctx_len": 128, "seed": 0, "corpus": "c"}
    if hook_out is not None:
        config["hook_out"] = hook_out
    return Result(
        evaluator="core",
        run_key="k",
        sae=SAERecord(name=name, source="x", architecture="topk", d_in=4, d_sae=64, fingerprint=name),
        config=config,
        metrics={"l0": 32.0, "fvu": fvu, "delta_ce": 0.1},
        details={"density_histogram": {"counts": [1]}},
    )


BOARD = [
    _board_result("sae-mid", IN_HOOK, None, 0.10),
    _board_result("tc-a", IN_HOOK, OUT_HOOK, 0.30),
    _board_result("tc-b", IN_HOOK, OUT_HOOK, 0.20),
    _board_result("tc-other", f"blocks.{LAYER}.hook_resid_mid", OUT_HOOK, 0.25),
    _board_result("sae-post", "blocks.9.hook_resid_post", None, 0.05),
]


def test_the_board_ranks_transcoders_in_their_own_sections_after_the_saes(tmp_path):
    from saebench.leaderboard import render, write_leaderboard
    from saebench.results import result_path, write_result

    text = render(BOARD)
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == [
        f"## m1 · `{IN_HOOK}`",
        "## m1 · `blocks.9.hook_resid_post`",
        f"## Transcoders · m1 · `blocks.{LAYER}.hook_resid_mid` → `{OUT_HOOK}`",
        f"## Transcoders · m1 · `{IN_HOOK}` → `{OUT_HOOK}`",
    ]
    sections = {h: text.split(h)[1].split("\n## ")[0] for h in heads}
    sae_section, tc_section = sections[heads[0]], sections[heads[3]]
    # the SAE at the transcoders' input hook shares no table with them, and they with it
    assert "sae-mid" in sae_section and "tc-" not in sae_section
    assert "tc-a" in tc_section and "tc-b" in tc_section and "sae-mid" not in tc_section
    assert "tc-other" not in tc_section  # another input hook: another ranking
    assert "0.2 ★" in tc_section.replace("**", "")  # the best transcoder is marked among transcoders only
    # written to files (plots off), and the web site's sections follow the same order
    for r in BOARD:
        write_result(r, result_path(tmp_path / "res", r.sae.name, r.evaluator))
    out = write_leaderboard([tmp_path / "res"], tmp_path / "LEADERBOARD.md", plots=False)
    assert out.read_text() == text
    from saebench.web.model import Site, load

    loaded, left = load([tmp_path / "res"])
    site = Site(loaded, left, "t")
    assert [k[1] for k in site.keys] == [
        IN_HOOK,
        "blocks.9.hook_resid_post",
        f"blocks.{LAYER}.hook_resid_mid → {OUT_HOOK}",
        f"{IN_HOOK} → {OUT_HOOK}",
    ]


def test_compare_refuses_a_transcoder_against_an_sae_at_its_input_hook():
    from saebench.compare import config_differences

    assert config_differences(BOARD[0], BOARD[1]) == [f"hook_out (None vs {OUT_HOOK!r})"]
    assert config_differences(BOARD[1], BOARD[2]) == []


def test_the_trainer_fits_a_transcoder_and_it_round_trips(tmp_path):
    """``train_sae(targets=...)``: a TopK transcoder learns a non-linear map x -> y = ReLU(x A) B better
    than the best linear map does (held-out FVU), and saves and loads as a native transcoder."""
    from saebench.sae import load_native, reconstruct
    from saebench.train import train_sae

    g = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 16, generator=g)
    y = torch.relu(x @ torch.randn(16, 32, generator=g)) @ (torch.randn(32, 8, generator=g) / 4)
    tc, log = train_sae(x[:6144], "topk", 64, k=8, hook=IN_HOOK, model_name="m", targets=y[:6144],
                        hook_out=OUT_HOOK, epochs=20, batch_tokens=256, lr=3e-3, progress=False)  # fmt: skip
    assert tc.cfg.d_out == 8 and tc.hook_name_out == OUT_HOOK and not tc.cfg.apply_b_dec_to_input

    def fvu(pred: torch.Tensor) -> float:
        yt = y[6144:]
        return float(((yt - pred) ** 2).sum() / ((yt - yt.mean(0)) ** 2).sum())

    ones = torch.ones(8192, 1)
    w = torch.linalg.lstsq(torch.cat([x, ones], 1)[:6144], y[:6144]).solution
    linear = fvu(torch.cat([x, ones], 1)[6144:] @ w)
    with torch.no_grad():
        learned = fvu(reconstruct(tc, x[6144:]))
    assert learned < 0.75 * linear and learned < 0.2, (learned, linear)
    back = load_native(save_native(tc, tmp_path / "tc"))
    assert back.hook_name_out == OUT_HOOK and back.d_out == 8
    with torch.no_grad():
        assert torch.equal(reconstruct(back, x[:64]), reconstruct(tc, x[:64]))
    with pytest.raises(SaebenchError, match="hook_out"):
        train_sae(x, "topk", 64, k=8, hook=IN_HOOK, model_name="m", targets=y, epochs=1, progress=False)


def _random_transcoder(tmp_path):
    """A random native TopK transcoder ln2.hook_normalized -> hook_mlp_out (k=8 of 64 latents)."""
    cfg = SAEConfig(architecture="topk", d_in=576, d_sae=64, k=8, d_out=576, hook_name=IN_HOOK,
                    hook_name_out=OUT_HOOK, apply_b_dec_to_input=False, model_name="smollm2-135m")  # fmt: skip
    sae = NativeSAE(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return save_native(sae, tmp_path / "tc")


def test_probing_absorption_autointerp_and_ablation_run_on_a_transcoder(model, tmp_path, cache_env):
    """Latents are read from the input hook by every evaluator; absorption scores the task at the
    output hook (probe, projections, decoder rows) with the latents of the input at the same words;
    the ablation evaluator splices and ablates at the output hook."""
    folder = _random_transcoder(tmp_path)
    cfg = {
        "probing": {"tasks": ["haystack_high-school", "agnews_sports"], "max_train": 24, "max_test": 24,
                    "max_tokens": 24},
        "absorption": {"n_words": 200, "icl_examples": 2, "min_probe_f1": 0.0, "min_letters": 1, "max_k": 2,
                       "min_true_positives": 1},
        "autointerp": {"n_latents": 2, "n_top_explain": 2, "n_sampled_explain": 1, "n_top_score": 1,
                       "n_sampled_score": 1, "n_random_score": 2, "n_random_simulation": 1, "n_random_fuzz": 1,
                       "window": 2},
        "ablation": {"n_pairs": 4, "window": 4},
    }  # fmt: skip
    run = evaluate(str(folder), model=model, evals=["probing", "absorption", "autointerp", "ablation"],
                   eval_config=cfg, progress=False, tokens=1024, ctx_len=32, batch_size=8)  # fmt: skip
    m = run.metrics
    assert m["probing"]["n_tasks_scored"] == 2 and m["probing"]["heldout_probe_loss"] is not None
    assert m["absorption"]["n_letters_scored"] >= 1 and m["absorption"]["absorption_rate"] is not None
    ai = m["autointerp"]
    assert ai["n_latents_run"] >= 1 and ai["n_failed"] == 0 and ai["fuzzing_auroc"] is not None, ai
    assert m["ablation"]["ablation_sparsity_active"] is not None, m["ablation"]
    absorption = run.results["tc"]["absorption"]
    assert any(OUT_HOOK in n for n in absorption.notes) and absorption.config["hook_out"] == OUT_HOOK


def test_ksweep_views_of_a_skip_transcoder_write_its_output_hook(model, tmp_path, cache_env):
    """ksweep's TopK view at the trained k is the transcoder itself (skip term included): its FVU and
    ΔCE equal core's (a view that lost the output hook would compare with the input instead)."""
    cfg = SAEConfig(architecture="topk", d_in=576, d_sae=64, k=8, d_out=576, hook_name=IN_HOOK, skip_connection=True,
                    hook_name_out=OUT_HOOK, apply_b_dec_to_input=False, model_name="smollm2-135m")  # fmt: skip
    sae = NativeSAE(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    folder = save_native(sae, tmp_path / "skiptc")
    run = evaluate(str(folder), model=model, evals=["core", "ksweep"], eval_config={"ksweep": {"ks": [8]}},
                   progress=False, **SMALL)  # fmt: skip
    core, sweep = run.metrics["core"], run.results["skiptc"]["ksweep"].details["sweep"]
    at = sweep["k"].index(8)
    assert sweep["fvu"][at] == pytest.approx(core["fvu"], rel=1e-9)
    assert sweep["delta_ce"][at] == pytest.approx(core["delta_ce"], rel=1e-6, abs=1e-9)
    assert sweep["l0"][at] == pytest.approx(core["l0"]) and core["l0"] == pytest.approx(8.0)
    assert run.results["skiptc"]["ksweep"].config["hook_out"] == OUT_HOOK
