"""SAELens' per-head attention-output SAEs (``hook_z``) against SAELens' own code.

A SAELens ``hook_z`` SAE reads ``blocks.L.attn.hook_z`` ``[.., n_heads, d_head]`` flattened head-major
to ``n_heads * d_head`` and reshapes its reconstruction back; our pipeline hands an SAE at
``attn.hook_z`` the same flattened activation and reshapes the splice back. On a tiny random GPT-2
(4 heads of d_head 8, from tests/test_models_families.py):

- a hook_z SAE built and saved by sae-lens (6.x config, and the same weights under a 5.x config that
  marks hook_z only by its hook name) loads with ours, encodes and decodes the flattened hook_z as
  sae-lens does on the 4-d activation, and the spliced logits equal the model run with sae-lens'
  SAE hooked in at attn.hook_z;
- core through ``evaluate``: an SAE with decode(encode(x)) == x exactly gives ΔCE 0 and KL 0;
- a head-count mismatch and a single-head (``hook_head_index``) SAE are refused in one line.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_models_families import build_model, random_tokens

from saebench import evaluate
from saebench.cli import main
from saebench.errors import SaebenchError
from saebench.loading import load_sae
from saebench.models import EMBEDDED_MODEL, check_hook_width

HOOK = "blocks.1.attn.hook_z"
N_HEADS, D_HEAD = 4, 8  # tests/test_models_families.py COMMON
D_IN, D_SAE = N_HEADS * D_HEAD, 48


@pytest.fixture(scope="module")
def gpt2():
    return build_model("gpt2")


def _sae_lens_hook_z(arch: str = "standard", d_in: int = D_IN, **extra):
    """A sae-lens hook_z SAE on random weights (reshape_activations='hook_z', as its hook_z releases)."""
    import sae_lens

    classes = {
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
    }
    cls, cfg_cls = classes[arch]
    cfg = cfg_cls(d_in=d_in, d_sae=D_SAE, reshape_activations="hook_z", **extra)
    cfg.metadata.hook_name = HOOK
    cfg.metadata.model_name = "random-gpt2"
    sae = cls(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(0.05 + 0.1 * torch.rand(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return sae


def _hook_z(model, tokens: torch.Tensor) -> torch.Tensor:
    """The model's own attn.hook_z activation, ``[B, T, n_heads, d_head]``."""
    _, cache = model.model.run_with_cache(tokens, names_filter=HOOK)
    return cache[HOOK]


@pytest.mark.parametrize(("arch", "extra"), [("standard", {}), ("topk", {"k": 6}), ("jumprelu", {})])
def test_hook_z_sae_matches_sae_lens_encode_decode_and_splice(gpt2, tmp_path, arch, extra):
    ref = _sae_lens_hook_z(arch, **extra)
    assert ref.hook_z_reshaping_mode
    ref.save_model(tmp_path / "z")
    info = load_sae(str(tmp_path / "z"))
    assert info.hook_name == HOOK and info.sae.d_in == D_IN
    assert any("hook_z SAE" in n for n in info.notes)

    toks = random_tokens().tokens[:3]
    with torch.no_grad():
        z4 = _hook_z(gpt2, toks)  # [B, T, 4, 8]
        assert z4.shape[-2:] == (N_HEADS, D_HEAD)
        site = gpt2.hook_site(HOOK)
        state = gpt2.prefix(toks, site)
        flat = gpt2.hook_acts(state, site)
        assert torch.equal(flat, z4.flatten(2))  # our pipeline's layout is SAELens' (heads, then d_head)

        lat_ref = ref.encode(z4)  # SAELens flattens the heads itself
        rec_ref = ref.decode(lat_ref)  # and reshapes back to [B, T, 4, 8]
        lat = info.sae.encode(flat)
        rec = info.sae.decode(lat)
        assert rec_ref.shape == z4.shape and rec.shape == flat.shape
        assert (lat_ref != 0).any() and (lat_ref == 0).any()
        assert torch.allclose(lat, lat_ref, atol=1e-5), (lat - lat_ref).abs().max()
        assert torch.allclose(rec, rec_ref.flatten(2), atol=1e-5), (rec - rec_ref.flatten(2)).abs().max()

        # end to end: our splice == the model run with SAELens' SAE hooked in at attn.hook_z
        hooked = gpt2.model.run_with_hooks(toks, fwd_hooks=[(HOOK, lambda act, hook: ref(act))])
        ours = gpt2.suffix(state, site, rec)
        clean = gpt2.suffix(state, site)
    assert (ours - hooked).abs().max().item() < 1e-4
    assert (hooked - clean).abs().max().item() > 1e-2  # the SAE's error moves the logits: the check has teeth


def test_pre_6_config_marks_hook_z_by_its_hook_name(gpt2, tmp_path):
    """SAELens before 6.0 had no reshape flag: a hook_point at attn.hook_z was the mark (SAELens 6 infers
    reshape_activations='hook_z' from it when it loads such a config; so do we)."""
    from sae_lens import SAE

    ref = _sae_lens_hook_z()
    ref.save_model(tmp_path / "z")
    cfg = json.loads((tmp_path / "z" / "cfg.json").read_text())
    old = {
        "architecture": "standard",
        "d_in": cfg["d_in"],
        "d_sae": cfg["d_sae"],
        "dtype": "float32",
        "device": "cpu",
        "model_name": "random-gpt2",
        "hook_point": HOOK,
        "hook_point_layer": 1,
        "hook_point_head_index": None,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "sae_lens_training_version": "3.13.0",
    }
    (tmp_path / "z" / "cfg.json").write_text(json.dumps(old))
    theirs = SAE.load_from_disk(tmp_path / "z")
    assert theirs.cfg.reshape_activations == "hook_z"
    info = load_sae(str(tmp_path / "z"))
    assert info.hook_name == HOOK and any("hook_z SAE" in n for n in info.notes)
    toks = random_tokens().tokens[:2]
    with torch.no_grad():
        z4 = _hook_z(gpt2, toks)
        lat = info.sae.encode(z4.flatten(2))
        assert torch.allclose(lat, theirs.encode(z4), atol=1e-5)
        assert torch.allclose(info.sae.decode(lat), theirs.decode(theirs.encode(z4)).flatten(2), atol=1e-5)


def test_exact_hook_z_sae_gives_zero_delta_ce_and_kl(gpt2, tmp_path):
    """W_enc = [I, -I], W_dec = [I; -I], zero biases: relu(x) - relu(-x) == x exactly, so core's spliced
    pass at attn.hook_z must equal the clean pass (ΔCE 0, KL 0, FVU 0)."""
    eye = torch.eye(D_IN)
    sd = {
        "W_enc": torch.cat([eye, -eye], 1),
        "W_dec": torch.cat([eye, -eye], 0),
        "b_enc": torch.zeros(2 * D_IN),
        "b_dec": torch.zeros(D_IN),
    }
    import sae_lens

    cfg = sae_lens.StandardSAEConfig(d_in=D_IN, d_sae=2 * D_IN, reshape_activations="hook_z")
    cfg.metadata.hook_name = HOOK
    ref = sae_lens.StandardSAE(cfg)
    ref.load_state_dict(sd)
    ref.save_model(tmp_path / "exact")
    info = load_sae(str(tmp_path / "exact"))
    run = evaluate(
        info.sae, model=gpt2, hook=HOOK, token_set=random_tokens(), batch_size=4, progress=False, use_cache=False
    )
    core = run.metrics["core"]
    assert core["delta_ce"] == 0.0 and core["kl"] == 0.0 and core["fvu"] == 0.0
    assert core["ce_loss_with_ablation"] != core["ce_loss_without_sae"]  # zero-ablating hook_z matters here


def test_head_count_mismatch_is_one_line(gpt2, tmp_path, monkeypatch):
    """An SAE trained on 6 heads of d_head 8 at a 4-head model's hook_z: refused before the prefix pass."""
    ref = _sae_lens_hook_z(d_in=6 * D_HEAD)
    ref.save_model(tmp_path / "six")
    info = load_sae(str(tmp_path / "six"))

    def no_prefix(*args, **kwargs):
        raise AssertionError("the prefix pass ran before the width check")

    monkeypatch.setattr(gpt2, "prefix", no_prefix)
    with pytest.raises(SaebenchError) as err:
        evaluate(info.sae, model=gpt2, hook=HOOK, token_set=random_tokens(), batch_size=4, progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "d_in=48" in msg and "4 heads x d_head=8 = 32" in msg and "6 heads" in msg and "--model" in msg
    # the embedded model's shape (9 heads x 64) is checked before it is loaded
    with pytest.raises(SaebenchError, match=r"9 heads x d_head=64 = 576.*--model") as err:
        check_hook_width(EMBEDDED_MODEL, "blocks.3.attn.hook_z", 512, "x")
    assert "\n" not in str(err.value) and "8 heads of d_head=64" in str(err.value)


def test_cli_refuses_a_head_count_mismatch_on_the_embedded_model_before_loading_it(tmp_path, capsys, monkeypatch):
    """`saebench run` with a 512-wide hook_z SAE at the embedded model's 9 x 64 hook_z: exit 2, one
    `error:` line naming both widths, and the model is never loaded."""
    import saebench.runner

    monkeypatch.setattr(saebench.runner, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    import sae_lens

    cfg = sae_lens.StandardSAEConfig(d_in=512, d_sae=16, reshape_activations="hook_z")
    cfg.metadata.hook_name = "blocks.3.attn.hook_z"
    sae_lens.StandardSAE(cfg).save_model(tmp_path / "z")
    code = main(["run", "--sae", str(tmp_path / "z"), "--out", str(tmp_path / "out"), "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert "d_in=512" in lines[0] and "9 heads x d_head=64 = 576" in lines[0] and "8 heads of d_head=64" in lines[0]
    assert not list((tmp_path / "out").rglob("*.json")) if (tmp_path / "out").exists() else True


@pytest.mark.parametrize("key", ["hook_head_index", "hook_point_head_index"])
def test_single_head_sae_is_refused_in_one_line(tmp_path, key):
    ref = _sae_lens_hook_z(d_in=D_HEAD)
    ref.save_model(tmp_path / "h")
    cfg = json.loads((tmp_path / "h" / "cfg.json").read_text())
    if key == "hook_head_index":  # SAELens 6 keeps it in metadata
        cfg["metadata"]["hook_head_index"] = 2
    else:  # SAELens 5's spelling
        cfg.pop("reshape_activations")
        cfg[key] = 2
    (tmp_path / "h" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaebenchError) as err:
        load_sae(str(tmp_path / "h"))
    msg = str(err.value)
    assert "\n" not in msg and "hook_head_index=2" in msg and "no per-head splice" in msg and "all heads" in msg


def test_hook_z_flag_on_a_non_hook_z_hook_is_refused(tmp_path):
    ref = _sae_lens_hook_z()
    ref.save_model(tmp_path / "z")
    cfg = json.loads((tmp_path / "z" / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "blocks.1.hook_resid_post"
    (tmp_path / "z" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaebenchError, match="not an attn.hook_z hook.*fix hook_name"):
        load_sae(str(tmp_path / "z"))


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_config_width_of_per_head_hooks_equals_the_measured_width(family):
    """The width check reads per-head widths from the config (no prefix pass); on a GQA model too it
    must equal what the pipeline hands the SAE (hook_k/v: the key-value heads)."""
    from saebench.models import head_shape

    m = build_model(family)
    toks = random_tokens().tokens[:2]
    for kind in ("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v"):
        hook = f"blocks.1.{kind}"
        site = m.hook_site(hook)
        heads = head_shape(m.shape, hook)
        assert heads is not None
        assert m.hook_acts(m.prefix(toks, site), site).shape[-1] == heads[0] * heads[1], kind
    assert head_shape(m.shape, "blocks.1.hook_resid_post") is None
