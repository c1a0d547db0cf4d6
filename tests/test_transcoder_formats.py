"""Transcoders and skip-transcoders from other libraries: each written by that library's own save
code, loaded by saebench, and checked to reproduce the library's own ``encode`` and full output
(the skip term included) on the same weights, plus the native round trip and the one-line refusals.

- sae-lens: ``Transcoder``, ``SkipTranscoder``, ``JumpReLUTranscoder``, ``JumpReLUSkipTranscoder``
  saved with ``save_model`` (cfg.json + sae_weights.safetensors; the output hook in
  ``metadata.hook_name_out``).
- eai-sparsify (dev extra): ``SparseCoder`` with ``transcode=True`` and/or ``skip_connection=True``
  saved with ``save_to_disk`` (one hookpoint folder of cfg.json + sae.safetensors).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from saebench.errors import SaebenchError
from saebench.formats import detect_format, from_library_object, load_sae_lens_dir, load_sparsify
from saebench.loading import load_sae
from saebench.sae import is_transcoder, load_native, output_hook, output_width, reconstruct, save_native

D_IN, D_SAE, D_OUT = 8, 24, 6
HOOK_IN, HOOK_OUT = "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out"


def _randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _x(n: int = 20, d: int = D_IN, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 2.0


def _check_native_round_trip(tmp_path, sae, x: torch.Tensor) -> None:
    """convert → native folder → load: the transcoder keys, W_skip and every output survive."""
    again = load_native(save_native(sae, tmp_path / "native"))
    assert again.cfg.model_dump() == sae.cfg.model_dump()
    assert (again.hook_name_out, again.d_out) == (sae.hook_name_out, sae.d_out)
    assert hasattr(again, "W_skip") == hasattr(sae, "W_skip")
    if hasattr(sae, "W_skip"):
        assert torch.equal(again.W_skip, sae.W_skip)
    assert torch.equal(again.encode(x), sae.encode(x))
    assert torch.equal(reconstruct(again, x), reconstruct(sae, x))


# ---------------------------------------------------------------------------------------------
# SAELens


def _sae_lens(arch: str, hook_out: str | None = HOOK_OUT, hook_in: str | None = HOOK_IN, seed: int = 0):
    import sae_lens

    classes = {
        "transcoder": (sae_lens.Transcoder, sae_lens.TranscoderConfig),
        "skip_transcoder": (sae_lens.SkipTranscoder, sae_lens.SkipTranscoderConfig),
        "jumprelu_transcoder": (sae_lens.JumpReLUTranscoder, sae_lens.JumpReLUTranscoderConfig),
        "jumprelu_skip_transcoder": (sae_lens.JumpReLUSkipTranscoder, sae_lens.JumpReLUSkipTranscoderConfig),
    }
    cls, cfg_cls = classes[arch]
    cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False)
    if hook_in:
        cfg.metadata.hook_name = hook_in
    if hook_out:
        cfg.metadata.hook_name_out = hook_out
    cfg.metadata.model_name = "tiny"
    ref = cls(cfg).eval()
    _randomize(ref, seed)
    if hasattr(ref, "threshold"):
        with torch.no_grad():
            ref.threshold.abs_()  # mostly positive thresholds, so the jump does something
    return ref


SAE_LENS_CASES = {
    "transcoder": ("transcoder", False, "relu"),
    "skip_transcoder": ("skip_transcoder", True, "relu"),
    "jumprelu_transcoder": ("jumprelu_transcoder", False, "jumprelu"),
    "jumprelu_skip_transcoder": ("jumprelu_skip_transcoder", True, "jumprelu"),
}


@pytest.mark.parametrize("recorded", [True, False], ids=["hook_name_out", "inferred"])
@pytest.mark.parametrize("case", sorted(SAE_LENS_CASES))
def test_sae_lens_transcoder_matches_sae_lens(tmp_path, case, recorded):
    arch, skip, ours = SAE_LENS_CASES[case]
    ref = _sae_lens(arch, hook_out=HOOK_OUT if recorded else None)
    folder = tmp_path / "sl"
    ref.save_model(folder)
    assert detect_format(folder) == "sae_lens"
    info = load_sae(str(folder))
    sae = info.sae
    assert info.architecture == ours and info.hook_name == HOOK_IN and info.model_name == "tiny"
    assert sae.hook_name_out == HOOK_OUT and output_hook(sae) == HOOK_OUT
    assert sae.d_in == D_IN and sae.d_out == D_OUT and output_width(sae) == D_OUT and is_transcoder(sae)
    assert sae.cfg.apply_b_dec_to_input is False and hasattr(sae, "W_skip") == skip
    assert any("inferred" in n or "is an MLP input" in n for n in info.notes) == (not recorded)
    x = _x()
    with torch.no_grad():
        z_ref, y_ref = ref.encode(x), ref(x)  # forward: decode(encode(x)) (+ x W_skip^T)
        z, y = sae.encode(x), reconstruct(sae, x)
    assert (z_ref != 0).any() and (z_ref == 0).any()
    assert torch.allclose(z, z_ref, atol=1e-5), (z - z_ref).abs().max()
    assert torch.allclose(y, y_ref, atol=1e-5), (y - y_ref).abs().max()
    if skip:  # the skip term is really in the output: without it the prediction differs
        assert not torch.allclose(sae.decode(z), y_ref, atol=1e-3)
    _check_native_round_trip(tmp_path, sae, x)


def test_sae_lens_live_transcoder_object(tmp_path):
    """A SAELens skip-transcoder held in memory (what ``SAE.from_pretrained`` returns) converts the same."""
    ref = _sae_lens("jumprelu_skip_transcoder", seed=3)
    conv = from_library_object(ref)
    assert conv is not None and conv.sae.hook_name_out == HOOK_OUT and conv.sae.d_out == D_OUT
    x = _x(seed=4)
    with torch.no_grad():
        assert torch.allclose(conv.sae.encode(x), ref.encode(x), atol=1e-5)
        assert torch.allclose(reconstruct(conv.sae, x), ref(x), atol=1e-5)


def test_convert_cli_keeps_a_skip_transcoder(tmp_path, capsys):
    from saebench.cli import main

    ref = _sae_lens("skip_transcoder", seed=11)
    ref.save_model(tmp_path / "sl")
    assert main(["convert", f"sae_lens:{tmp_path / 'sl'}", str(tmp_path / "out")]) == 0
    assert "transcoder" in capsys.readouterr().out
    native = load_sae(str(tmp_path / "out")).sae
    assert (native.hook_name, native.hook_name_out, native.d_out) == (HOOK_IN, HOOK_OUT, D_OUT)
    x = _x(seed=12)
    with torch.no_grad():
        assert torch.allclose(reconstruct(native, x), ref(x), atol=1e-5)


def _edit_cfg(folder, **changes) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    for key, value in changes.items():
        if key.startswith("metadata."):
            cfg["metadata"][key.split(".", 1)[1]] = value
        else:
            cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _edit_weights(folder, **tensors) -> None:
    path = folder / "sae_weights.safetensors"
    t = load_file(str(path))
    for name, value in tensors.items():
        if value is None:
            t.pop(name)
        else:
            t[name] = value
    save_file(t, str(path))


def test_sae_lens_transcoder_widths_are_checked_before_reading(tmp_path, monkeypatch):
    """A cfg.json whose d_out, or a W_skip whose shape, disagrees with the weights' header is one line
    naming the tensor, before any tensor is read."""
    import saebench.formats.sae_lens as sl

    def no_read(path):
        raise AssertionError(f"read {path} before checking its header")

    ref = _sae_lens("skip_transcoder")
    ref.save_model(tmp_path / "a")
    _edit_cfg(tmp_path / "a", d_out=D_OUT + 1)
    ref.save_model(tmp_path / "b")
    _edit_weights(tmp_path / "b", W_skip=torch.zeros(D_IN, D_OUT))  # [d_in, d_out]: the transpose
    ref.save_model(tmp_path / "c")
    _edit_cfg(tmp_path / "c", d_in=D_IN + 2)
    monkeypatch.setattr(sl, "read_safetensors", no_read)
    for folder, tensor in (("a", "W_dec"), ("b", "W_skip"), ("c", "W_enc")):
        with pytest.raises(SaebenchError, match=rf"tensor {tensor} has shape .* but its config implies"):
            load_sae_lens_dir(tmp_path / folder)


def test_sae_lens_transcoder_refusals(tmp_path, capsys):
    from saebench.cli import main

    cases = {}
    ref = _sae_lens("transcoder")
    ref.save_model(tmp_path / "flavour")
    _edit_cfg(tmp_path / "flavour", architecture="topk_transcoder")
    cases["flavour"] = "transcoder flavour 'topk_transcoder' is not supported"
    _sae_lens("transcoder", hook_out=None, hook_in="blocks.3.hook_resid_pre").save_model(tmp_path / "no_out")
    cases["no_out"] = "records no output hook .*hook_resid_pre.* is not an MLP input"
    _sae_lens("transcoder", hook_out=None, hook_in=None).save_model(tmp_path / "no_in")
    cases["no_in"] = "records no input hook"
    _sae_lens("skip_transcoder").save_model(tmp_path / "no_skip")
    _edit_weights(tmp_path / "no_skip", W_skip=None)
    cases["no_skip"] = "lacks tensor W_skip"
    _sae_lens("skip_transcoder").save_model(tmp_path / "extra_skip")
    _edit_cfg(tmp_path / "extra_skip", architecture="transcoder")
    cases["extra_skip"] = "holds a skip term W_skip but architecture 'transcoder' has none"
    _sae_lens("transcoder").save_model(tmp_path / "layer_norm")
    _edit_cfg(tmp_path / "layer_norm", normalize_activations="layer_norm")
    cases["layer_norm"] = "transcoder with normalize_activations 'layer_norm' is not supported"
    for name, message in cases.items():
        with pytest.raises(SaebenchError, match=message):
            load_sae(str(tmp_path / name))
        capsys.readouterr()
        assert main(["convert", str(tmp_path / name), str(tmp_path / f"out-{name}")]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err


# ---------------------------------------------------------------------------------------------
# EleutherAI sparsify


def _sparsify(tmp_path, hookpoint: str, seed: int = 0, **cfg_kw):
    sparsify = pytest.importorskip("sparsify")
    cfg = sparsify.SparseCoderConfig(num_latents=D_SAE, k=5, **cfg_kw)
    ref = sparsify.SparseCoder(D_IN, cfg).eval()
    _randomize(ref, seed)
    folder = tmp_path / "run" / hookpoint
    ref.save_to_disk(folder)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "tiny-model", "sae": cfg.to_dict()}))
    return ref, folder


SPARSIFY_CASES = {  # hookpoint, config, expected (input hook, output hook)
    "mlp-transcoder": ("layers.3.mlp", {"transcode": True}, (HOOK_IN, HOOK_OUT)),
    "mlp-skip-transcoder": ("layers.3.mlp", {"transcode": True, "skip_connection": True}, (HOOK_IN, HOOK_OUT)),
    "layer-transcoder": ("layers.3", {"transcode": True}, ("blocks.3.hook_resid_pre", "blocks.3.hook_resid_post")),
    "skip-sae": ("layers.3", {"skip_connection": True}, ("blocks.3.hook_resid_post", "blocks.3.hook_resid_post")),
}


@pytest.mark.parametrize("case", sorted(SPARSIFY_CASES))
def test_sparsify_transcoder_matches_sparsify(tmp_path, case):
    hookpoint, cfg_kw, (hook_in, hook_out) = SPARSIFY_CASES[case]
    ref, folder = _sparsify(tmp_path, hookpoint, **cfg_kw)
    assert detect_format(folder) == "sparsify"
    info = load_sae(str(folder))
    sae = info.sae
    assert info.architecture == "topk" and sae.cfg.k == 5 and info.model_name == "tiny-model"
    assert (sae.hook_name, sae.hook_name_out) == (hook_in, hook_out) and is_transcoder(sae)
    assert sae.cfg.apply_b_dec_to_input is False and hasattr(sae, "W_skip") == bool(cfg_kw.get("skip_connection"))
    assert any("ln2" in n and "scale" in n for n in info.notes) == (hook_in == HOOK_IN)
    x = _x(seed=2)
    with torch.no_grad():
        top_acts, top_idx, _ = ref.encode(x)
        z_ref = torch.zeros(len(x), D_SAE).scatter_(-1, top_idx, top_acts)
        y_ref = ref(x).sae_out  # sparsify's own forward: decode (+ x W_skip^T)
        z, y = sae.encode(x), reconstruct(sae, x)
    assert torch.allclose(z, z_ref, atol=1e-5), (z - z_ref).abs().max()
    assert torch.allclose(y, y_ref, atol=1e-5), (y - y_ref).abs().max()
    _check_native_round_trip(tmp_path, sae, x)


def test_sparsify_sae_at_an_mlp_reads_mlp_out(tmp_path):
    """A plain sparsify SAE on ``layers.N.mlp`` (the module's output) is an SAE at ``hook_mlp_out``."""
    _, folder = _sparsify(tmp_path, "layers.2.mlp")
    sae = load_sparsify(folder).sae
    assert sae.hook_name == "blocks.2.hook_mlp_out" and not is_transcoder(sae)


def test_sparsify_transcoder_refusals(tmp_path, monkeypatch):
    import saebench.formats.sparsify as sp

    sparsify = pytest.importorskip("sparsify")
    _sparsify(tmp_path / "a", "embed_tokens", transcode=True)
    with pytest.raises(SaebenchError, match="transcoder at hookpoint 'embed_tokens' has no automatic"):
        load_sae(str(tmp_path / "a" / "run" / "embed_tokens"))
    ref = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=4, activation="groupmax"))
    ref.save_to_disk(tmp_path / "layers.1")
    with pytest.raises(SaebenchError, match="activation 'groupmax' is not supported"):
        load_sae(str(tmp_path / "layers.1"))
    # widths in the header that disagree with cfg.json: refused before any tensor is read
    _, folder = _sparsify(tmp_path / "b", "layers.3.mlp", transcode=True, skip_connection=True)
    t = load_file(str(folder / "sae.safetensors"))
    t["W_skip"] = torch.zeros(D_IN, D_IN + 1)
    save_file(t, str(folder / "sae.safetensors"))
    monkeypatch.setattr(sp, "read_safetensors", lambda p: (_ for _ in ()).throw(AssertionError("read")))
    with pytest.raises(SaebenchError, match=r"tensor W_skip has shape \[8, 9\], but its config implies \[8, 8\]"):
        load_sparsify(folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["d_in"] = D_IN + 4
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaebenchError, match=r"tensor encoder.weight has shape \[24, 8\], but its config implies"):
        load_sparsify(folder)


# ---------------------------------------------------------------------------------------------
# the MLP input after ln2's learned scale and bias (Hugging Face) vs transformer-lens' ln2.hook_normalized


def test_sparsify_mlp_transcoder_is_exact_after_folding_the_norm(tmp_path):
    """sparsify trained on ``ln2(h)`` = normalised(h) * w + b (the HF MLP's input); transformer-lens'
    ``ln2.hook_normalized`` is normalised(h). Folding ln2's w and b into the loaded transcoder makes it,
    read at normalised(h), equal to sparsify's own output on ln2(h); unfolded it differs."""
    from saebench.formats import fold_input_affine

    ref, folder = _sparsify(tmp_path, "layers.3.mlp", seed=5, transcode=True, skip_connection=True)
    sae = load_sparsify(folder).sae
    assert sae.cfg.input_norm_affine == "blocks.3.ln2"
    again = load_native(save_native(sae, tmp_path / "native"))
    assert again.cfg.input_norm_affine == "blocks.3.ln2"  # the mark survives conversion
    g = torch.Generator().manual_seed(6)
    ln2 = torch.nn.LayerNorm(D_IN)
    with torch.no_grad():
        ln2.weight.copy_(torch.rand(D_IN, generator=g) * 2 + 0.2)
        ln2.bias.copy_(torch.randn(D_IN, generator=g) * 0.5)
    h = _x(seed=7) * 3 + 1
    normalized = torch.nn.functional.layer_norm(h, (D_IN,))  # what ln2.hook_normalized holds
    folded = fold_input_affine(sae, ln2.weight, ln2.bias)
    assert getattr(folded.cfg, "input_norm_affine", None) is None
    with torch.no_grad():
        top_acts, top_idx, _ = ref.encode(ln2(h))
        z_ref = torch.zeros(len(h), D_SAE).scatter_(-1, top_idx, top_acts)
        y_ref = ref(ln2(h)).sae_out
        assert torch.allclose(folded.encode(normalized), z_ref, atol=1e-5)
        assert torch.allclose(reconstruct(folded, normalized), y_ref, atol=1e-5)
        assert not torch.allclose(reconstruct(sae, normalized), y_ref, atol=1e-2)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "gated", "topk"])
def test_fold_input_affine_is_exact(arch):
    from saebench.formats import fold_input_affine
    from saebench.sae import NativeSAE, SAEConfig

    cfg = SAEConfig(architecture=arch, d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, k=5 if arch == "topk" else None,
                    apply_b_dec_to_input=False, act_scale=1.7, skip_connection=True, hook_name=HOOK_IN,
                    hook_name_out=HOOK_OUT)  # fmt: skip
    sae = NativeSAE(cfg).eval()
    _randomize(sae, seed=8)
    if arch == "jumprelu":
        with torch.no_grad():
            sae.threshold.abs_()
    g = torch.Generator().manual_seed(9)
    s, b = torch.rand(D_IN, generator=g) + 0.5, torch.randn(D_IN, generator=g)
    u = _x(seed=10)
    folded = fold_input_affine(sae, s, b)
    with torch.no_grad():
        z = sae.encode(u * s + b)
        assert (z != 0).any()
        assert torch.allclose(folded.encode(u), z, atol=1e-5)
        assert torch.allclose(reconstruct(folded, u), reconstruct(sae, u * s + b), atol=1e-5)
    centred = NativeSAE(SAEConfig(architecture="relu", d_in=D_IN, d_sae=D_SAE))
    with pytest.raises(SaebenchError, match="without b_dec centring"):
        fold_input_affine(centred, s, b)
    with pytest.raises(SaebenchError, match=r"must both be \[d_in\]"):
        fold_input_affine(sae, s[:-1])


def test_sparsify_mlp_hookpoint_is_these_hooks_on_the_embedded_model(model, tmp_path):
    """What sparsify hooks on ``layers.L.mlp`` of the Hugging Face model (the module's input and
    output) against transformer-lens on the same weights: the output is ``blocks.L.hook_mlp_out``; the
    input is ``blocks.L.ln2.hook_normalized`` times ln2's learned scale (so the loader's mark and
    ``fold_input_affine`` are needed, and the hook alone is not the input). A sparsify skip-transcoder
    on the real MLP input, loaded and folded with :func:`apply_input_norm`, reproduces sparsify's own
    output from the transformer-lens hook."""
    from saebench.formats import apply_input_norm
    from saebench.formats.common import hf_transcoder_hooks
    from saebench.models import load_embedded_hf

    layer = 3
    hook_in, hook_out = hf_transcoder_hooks(f"layers.{layer}.mlp")
    hf, _ = load_embedded_hf()
    ids = torch.tensor([[0, 504, 3458, 314, 253, 1789, 28, 2521, 30]])
    seen = {}

    def grab(_module, inputs, output):
        seen["in"], seen["out"] = inputs[0].detach(), output.detach()

    handle = hf.model.get_submodule(f"layers.{layer}.mlp").register_forward_hook(grab)
    try:
        with torch.no_grad():
            hf(ids)
    finally:
        handle.remove()
    with torch.no_grad():
        _, cache = model.model.run_with_cache(ids, names_filter=[hook_in, hook_out], stop_at_layer=layer + 1)
    w = model.model.blocks[layer].ln2.w.detach()
    scale = seen["in"].abs().max()
    assert torch.allclose(seen["out"], cache[hook_out], atol=1e-4 * float(seen["out"].abs().max()))
    assert torch.allclose(seen["in"], cache[hook_in] * w, atol=1e-4 * float(scale))
    assert not torch.allclose(seen["in"], cache[hook_in], atol=1e-2 * float(scale))
    # a sparsify skip-transcoder at layers.3.mlp of this model: ours at the hook, folded == theirs on the HF input
    sparsify = pytest.importorskip("sparsify")
    d = int(w.shape[0])
    ref = sparsify.SparseCoder(d, sparsify.SparseCoderConfig(num_latents=64, k=8, transcode=True, skip_connection=True))
    _randomize(ref, seed=13, scale=0.05)
    ref.save_to_disk(tmp_path / f"layers.{layer}.mlp")
    sae = load_sparsify(tmp_path / f"layers.{layer}.mlp").sae
    folded = apply_input_norm(sae, model)
    assert apply_input_norm(folded, model) is folded  # the mark is gone: folding is done once
    x_in, x_hook = seen["in"][0], cache[hook_in][0]
    with torch.no_grad():
        y_ref = ref(x_in).sae_out
        y = reconstruct(folded, x_hook)
        assert torch.allclose(y, y_ref, atol=1e-4 * float(y_ref.abs().max())), (y - y_ref).abs().max()
        assert not torch.allclose(reconstruct(sae, x_hook), y_ref, atol=1e-2 * float(y_ref.abs().max()))
    sae.cfg.input_norm_affine = "blocks.99.ln2"
    with pytest.raises(SaebenchError, match="the model does not have"):
        apply_input_norm(sae, model)


def test_hook_names_for_transcoders():
    from saebench.formats.common import hf_hookpoint_to_hook, hf_transcoder_hooks, mlp_output_hook

    assert hf_transcoder_hooks("h.5.mlp") == ("blocks.5.ln2.hook_normalized", "blocks.5.hook_mlp_out")
    assert hf_transcoder_hooks("model.layers.12.mlp") == ("blocks.12.ln2.hook_normalized", "blocks.12.hook_mlp_out")
    assert hf_transcoder_hooks("gpt_neox.layers.2") == ("blocks.2.hook_resid_pre", "blocks.2.hook_resid_post")
    assert hf_transcoder_hooks("layers.2.self_attn") is None and hf_transcoder_hooks("embed_tokens") is None
    assert hf_hookpoint_to_hook("h.5.mlp") == "blocks.5.hook_mlp_out"
    assert hf_hookpoint_to_hook("layers.5") == "blocks.5.hook_resid_post"
    assert mlp_output_hook("blocks.4.hook_mlp_in") == "blocks.4.hook_mlp_out"
    assert mlp_output_hook("blocks.4.ln2.hook_normalized") == "blocks.4.hook_mlp_out"
    assert mlp_output_hook("blocks.4.hook_resid_mid") is None and mlp_output_hook(None) is None


def test_a_run_folds_the_norm_into_a_marked_transcoder(model, token_set, cache_env, tmp_path):
    """``saebench run`` on a sparsify MLP transcoder encodes what sparsify trained on, ``ln2.hook_normalized
    x ln2.w``: its L0 equals the one computed by hand on that input, not the one on the bare hook."""
    from conftest import SMALL

    from saebench import evaluate

    sparsify = pytest.importorskip("sparsify")
    layer, d = 6, 576
    ref = sparsify.SparseCoder(d, sparsify.SparseCoderConfig(num_latents=16, k=4, transcode=True))
    _randomize(ref, seed=14, scale=0.05)
    hook_in = f"blocks.{layer}.ln2.hook_normalized"
    _, cache = model.model.run_with_cache(token_set.tokens, names_filter=[hook_in], stop_at_layer=layer + 1)
    x = cache[hook_in][token_set.tokens != model.bos_id].double()
    gain = model.model.blocks[layer].ln2.w.detach().double()
    w_enc = ref.encoder.weight.detach().double()
    top = ((x * gain) @ w_enc.T).max(-1).values.sort().values
    with torch.no_grad():  # midway between two middle top pre-activations of the trained-on input: the fold
        ref.encoder.bias.fill_(-float(top[len(top) // 2 : len(top) // 2 + 2].mean()))  # decides L0, no ties

    def l0_by_hand(inp: torch.Tensor) -> float:
        pre = torch.relu(inp @ w_enc.T + ref.encoder.bias.detach().double())
        return float((pre.topk(4, dim=-1).values > 0).sum(-1).double().mean())

    folded_l0, bare_l0 = l0_by_hand(x * gain), l0_by_hand(x)
    assert 0.2 < folded_l0 < 3.5 and abs(folded_l0 - bare_l0) > 0.5, (folded_l0, bare_l0)
    ref.save_to_disk(tmp_path / f"layers.{layer}.mlp")
    m = evaluate(str(tmp_path / f"layers.{layer}.mlp"), model=model, evals=["core"], **SMALL).metrics["core"]
    assert m["l0"] == pytest.approx(folded_l0, rel=1e-5), (m["l0"], folded_l0, bare_l0)
