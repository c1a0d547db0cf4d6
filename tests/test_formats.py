"""Other ecosystems' SAE files: each written by that library's own save code where it installs
offline, loaded by saebench, and checked to reproduce the library's own encode/decode outputs.

- sae-lens (installed, a core dependency): ``SAE.save_model`` / ``TrainingSAE.save_inference_model``.
- eai-sparsify (dev extra): ``SparseCoder.save_to_disk``.
- dictionary-learning 0.1.0: its ``trainSAE`` writes ``ae.pt`` + ``config.json``. The package cannot
  be installed with its dependencies here (nnsight pulls another torch + torchvision), so it is
  installed with ``--no-deps`` and the two modules it imports but these tests never use
  (``nnsight``, ``wandb``) are stubbed when absent. Skipped when the package is missing.
- openai/sparse_autoencoder is not on PyPI (GitHub only, no network here): ``_OpenAIReference``
  below is a FIXTURE WRITTEN FROM THE LIBRARY'S DOCUMENTED LAYOUT (its ``model.py``: state-dict
  keys, ``activation``/``activation_state_dict`` entries, LayerNorm for TopK), not their code.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest
import torch
from conftest import write_native

from saebench.errors import SaebenchError
from saebench.formats import detect_format, load_dictionary_learning, load_openai, load_sae_lens_dir, load_sparsify
from saebench.loading import load_sae
from saebench.sae import load_native, save_native

D_IN, D_SAE = 16, 48


def _randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _x(n: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2.0


def _check_round_trip(tmp_path, loaded_sae, x: torch.Tensor) -> None:
    """convert → native folder → load: identical outputs."""
    folder = save_native(loaded_sae, tmp_path / "converted")
    again = load_native(folder)
    z = loaded_sae.encode(x)
    x_hat = loaded_sae.decode(z)
    assert torch.equal(again.encode(x), z)
    assert torch.equal(again.decode(z), x_hat)
    assert again.cfg.model_dump() == loaded_sae.cfg.model_dump()


# ---------------------------------------------------------------------------------------------
# SAELens


def _sae_lens(arch: str, **extra):
    import sae_lens

    classes = {
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
        "gated": (sae_lens.GatedSAE, sae_lens.GatedSAEConfig),
    }
    cls, cfg_cls = classes[arch]
    cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, **extra)
    cfg.metadata.hook_name = "blocks.3.hook_resid_post"
    cfg.metadata.model_name = "tiny"
    sae = cls(cfg)
    _randomize(sae)
    return sae


SAE_LENS_CASES = {
    "standard": ("standard", {}, "relu"),
    "standard-no-bdec": ("standard", {"apply_b_dec_to_input": False}, "relu"),
    "standard-layer-norm": ("standard", {"normalize_activations": "layer_norm"}, "relu"),
    "topk": ("topk", {"k": 5}, "topk"),
    "topk-rescaled": ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}, "topk"),
    "jumprelu": ("jumprelu", {}, "jumprelu"),
    "gated": ("gated", {}, "gated"),
}


@pytest.mark.parametrize("case", sorted(SAE_LENS_CASES))
def test_sae_lens_folder_matches_sae_lens(tmp_path, case):
    arch, extra, ours = SAE_LENS_CASES[case]
    ref = _sae_lens(arch, **extra)
    folder = tmp_path / "sl"
    ref.save_model(folder)
    assert detect_format(folder) == "sae_lens"
    info = load_sae(str(folder))
    assert info.architecture == ours and info.hook_name == "blocks.3.hook_resid_post" and info.model_name == "tiny"
    assert any("SAELens" in n for n in info.notes)
    x = _x()
    with torch.no_grad():
        z_ref = ref.encode(x)
        x_ref = ref.decode(z_ref)
        z = info.sae.encode(x)
        x_hat = info.sae.decode(z)
    assert torch.allclose(z, z_ref, atol=1e-5), (z - z_ref).abs().max()
    assert torch.allclose(x_hat, x_ref, atol=1e-4), (x_hat - x_ref).abs().max()
    assert (z != 0).any()
    _check_round_trip(tmp_path, info.sae, x)


def test_sae_lens_batchtopk_saved_as_jumprelu(tmp_path):
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, JumpReLUSAE

    train = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5))
    _randomize(train)
    train.topk_threshold = torch.tensor(0.4)
    train.save_inference_model(tmp_path / "btk")
    ref = JumpReLUSAE.load_from_disk(tmp_path / "btk")
    conv = load_sae_lens_dir(tmp_path / "btk")
    assert conv.architecture == "batchtopk" and conv.sae.threshold.shape == ()
    x = _x()
    with torch.no_grad():
        assert torch.allclose(conv.sae.encode(x), ref.encode(x), atol=1e-5)
        assert torch.allclose(conv.sae.decode(ref.encode(x)), ref.decode(ref.encode(x)), atol=1e-4)


def test_sae_lens_prefix_and_bad_specs(tmp_path):
    ref = _sae_lens("topk", k=3)
    ref.save_model(tmp_path / "sl")
    assert load_sae(f"sae_lens:{tmp_path / 'sl'}").architecture == "topk"
    with pytest.raises(SaebenchError, match="RELEASE/ID"):
        load_sae("sae_lens:no-slash-here")


# ---------------------------------------------------------------------------------------------
# EleutherAI sparsify


def _sparsify(tmp_path, k: int = 6):
    sparsify = pytest.importorskip("sparsify")
    cfg = sparsify.SparseCoderConfig(num_latents=D_SAE, k=k)
    ref = sparsify.SparseCoder(D_IN, cfg)
    _randomize(ref)
    folder = tmp_path / "run" / "layers.3"
    ref.save_to_disk(folder)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "tiny-model", "sae": cfg.to_dict()}))
    return ref, folder


def test_sparsify_matches_sparsify(tmp_path):
    ref, folder = _sparsify(tmp_path)
    assert detect_format(folder) == "sparsify"
    info = load_sae(str(folder))
    assert info.architecture == "topk" and info.sae.cfg.k == 6
    assert info.hook_name == "blocks.3.hook_resid_post" and info.model_name == "tiny-model"
    x = _x()
    with torch.no_grad():
        top_acts, top_idx, _ = ref.encode(x)
        z_ref = torch.zeros(len(x), D_SAE).scatter_(-1, top_idx, top_acts)
        x_ref = ref.decode(top_acts, top_idx)
        z = info.sae.encode(x)
        assert torch.allclose(z, z_ref, atol=1e-5)
        assert torch.allclose(info.sae.decode(z), x_ref, atol=1e-4)
    _check_round_trip(tmp_path, info.sae, x)
    for spec in (f"sparsify:{tmp_path / 'run'}", str(tmp_path / "run")):
        with pytest.raises(SaebenchError, match="one sparsify SAE per hookpoint.*layers.3"):
            load_sae(spec)


def test_sparsify_and_native_share_file_names_but_are_told_apart(tmp_path):
    _, folder = _sparsify(tmp_path)
    native, _ = write_native(tmp_path / "native", arch="topk", d_in=D_IN, d_sae=D_SAE)
    assert detect_format(native) == "native" and detect_format(folder) == "sparsify"
    with pytest.raises(SaebenchError, match="looks like a saebench native folder"):
        load_sparsify(native)
    with pytest.raises(SaebenchError, match="looks like a EleutherAI sparsify|looks like an? EleutherAI sparsify"):
        load_sae_lens_dir(folder)


def test_sparsify_refuses_what_it_cannot_represent(tmp_path):
    """groupmax is refused; transcoders and skip connections load (tests/test_transcoder_formats.py)."""
    sparsify = pytest.importorskip("sparsify")
    ref = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=4, activation="groupmax"))
    ref.save_to_disk(tmp_path / "layers.1")
    with pytest.raises(SaebenchError, match="groupmax"):
        load_sae(str(tmp_path / "layers.1"))


# ---------------------------------------------------------------------------------------------
# OpenAI sparse_autoencoder (fixture from the documented layout: the library is not on PyPI)


class _OpenAIReference(torch.nn.Module):
    """Mirrors openai/sparse_autoencoder's documented ``Autoencoder``: latents =
    act(encoder(x - pre_bias) + latent_bias), recons = decoder(latents) + pre_bias, with
    LayerNorm of x (eps 1e-5, unbiased std) for TopK autoencoders; its ``state_dict`` adds the
    ``activation`` name and ``activation_state_dict`` like theirs does."""

    def __init__(self, k: int | None) -> None:
        super().__init__()
        self.k = k
        self.pre_bias = torch.nn.Parameter(torch.zeros(D_IN))
        self.encoder = torch.nn.Linear(D_IN, D_SAE, bias=False)
        self.latent_bias = torch.nn.Parameter(torch.zeros(D_SAE))
        self.decoder = torch.nn.Linear(D_SAE, D_IN, bias=False)
        self.register_buffer("stats_last_nonzero", torch.zeros(D_SAE, dtype=torch.long))
        self.register_buffer("latents_activation_frequency", torch.ones(D_SAE))
        self.register_buffer("latents_mean_square", torch.zeros(D_SAE))

    def encode(self, x):
        info = {}
        if self.k:
            mu = x.mean(-1, keepdim=True)
            std = (x - mu).std(-1, keepdim=True)
            x, info = (x - mu) / (std + 1e-5), {"mu": mu, "std": std}
        pre = torch.nn.functional.linear(x - self.pre_bias, self.encoder.weight, self.latent_bias)
        if not self.k:
            return torch.relu(pre), info
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values)), info

    def decode(self, z, info):
        out = self.decoder(z) + self.pre_bias
        return out * info["std"] + info["mu"] if self.k else out

    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        sd["activation"] = "TopK" if self.k else "ReLU"
        sd["activation_state_dict"] = {"k": self.k, "postact_fn": "ReLU"} if self.k else {}
        return sd


@pytest.mark.parametrize("k", [None, 4])
def test_openai_layout(tmp_path, k):
    ref = _OpenAIReference(k)
    _randomize(ref)
    path = tmp_path / "layer_3.pt"
    torch.save(ref.state_dict(), path)
    assert detect_format(path) == "openai"
    info = load_sae(str(path))
    assert info.architecture == ("topk" if k else "relu") and info.name == "layer_3"
    x = _x()
    with torch.no_grad():
        z_ref, meta = ref.encode(x)
        x_ref = ref.decode(z_ref, meta)
        z = info.sae.encode(x)
        assert torch.allclose(z, z_ref, atol=1e-5)
        assert torch.allclose(info.sae.decode(z), x_ref, atol=1e-4)
    _check_round_trip(tmp_path, info.sae, x)


def test_layer_norm_sae_refuses_decode_without_matching_encode(tmp_path):
    ref = _OpenAIReference(4)
    _randomize(ref)
    torch.save(ref.state_dict(), tmp_path / "a.pt")
    sae = load_openai(tmp_path / "a.pt").sae
    with pytest.raises(SaebenchError, match="encode"):
        sae.decode(torch.zeros(3, D_SAE))


# ---------------------------------------------------------------------------------------------
# saprmarks dictionary_learning (trainSAE's own save code; see module docstring)


@pytest.fixture(scope="module")
def dictionary_learning_runs(tmp_path_factory):
    if importlib.util.find_spec("dictionary_learning") is None:
        pytest.skip("dictionary-learning not installed (pip install --no-deps dictionary-learning==0.1.0)")
    stubbed = []
    for name in ("nnsight", "wandb"):
        if importlib.util.find_spec(name) is None:  # imported at module level, unused by trainSAE here
            mod = types.ModuleType(name)
            mod.LanguageModel = object
            sys.modules[name] = mod
            stubbed.append(name)
    try:
        from dictionary_learning.trainers import (
            BatchTopKTrainer,
            GatedSAETrainer,
            JumpReluTrainer,
            StandardTrainer,
            TopKTrainer,
        )
        from dictionary_learning.trainers.standard import StandardTrainerAprilUpdate
        from dictionary_learning.training import trainSAE

        torch.manual_seed(0)
        common = {
            "steps": 40,
            "activation_dim": D_IN,
            "dict_size": D_SAE,
            "layer": 3,
            "lm_name": "tiny-lm",
            "device": "cpu",
            "warmup_steps": 2,
            "submodule_name": "resid_post_layer_3",
        }
        configs = [
            {"trainer": StandardTrainer, **common, "sparsity_warmup_steps": 2},
            {"trainer": StandardTrainerAprilUpdate, **common, "sparsity_warmup_steps": 2},
            {"trainer": TopKTrainer, **common, "k": 5, "threshold_start_step": 5},
            {"trainer": BatchTopKTrainer, **common, "k": 5, "threshold_start_step": 5},
            {"trainer": JumpReluTrainer, **common, "sparsity_warmup_steps": 2, "lr": 1e-2},
            {"trainer": GatedSAETrainer, **common, "sparsity_warmup_steps": 2, "lr": 1e-2},
        ]
        g = torch.Generator().manual_seed(0)
        data = iter([torch.randn(64, D_IN, generator=g) * 2 + 1 for _ in range(41)])
        out = tmp_path_factory.mktemp("dl")
        trainSAE(data, configs, steps=40, save_dir=str(out), device="cpu", normalize_activations=False)
        from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
        from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
        from dictionary_learning.trainers.top_k import AutoEncoderTopK

        classes = [AutoEncoder, AutoEncoder, AutoEncoderTopK, BatchTopKSAE, JumpReluAutoEncoder, GatedAutoEncoder]
        yield out, classes
    finally:
        for name in stubbed:
            sys.modules.pop(name, None)


DL_EXPECTED = ["relu", "relu", "topk", "batchtopk", "jumprelu", "gated"]


@pytest.mark.parametrize("i", range(6))
def test_dictionary_learning_matches_library(tmp_path, dictionary_learning_runs, i):
    out, classes = dictionary_learning_runs
    folder = out / f"trainer_{i}"
    assert detect_format(folder) == "dictionary_learning"
    info = load_sae(str(folder))
    assert info.architecture == DL_EXPECTED[i]
    assert info.model_name == "tiny-lm" and info.hook_name == "blocks.3.hook_resid_post"
    sd = torch.load(folder / "ae.pt", weights_only=True)
    ref = classes[i](D_IN, D_SAE, int(sd["k"])) if "k" in sd else classes[i](D_IN, D_SAE)
    ref.load_state_dict(sd)
    x = _x()
    with torch.no_grad():
        z_ref = ref.encode(x)
        z = info.sae.encode(x)
        assert torch.allclose(z, z_ref, atol=1e-5), (z - z_ref).abs().max()
        assert torch.allclose(info.sae.decode(z), ref.decode(z_ref), atol=1e-4)
    _check_round_trip(tmp_path, info.sae, x)
    assert load_sae(f"dictionary_learning:{folder / 'ae.pt'}").architecture == DL_EXPECTED[i]


def test_dictionary_learning_refuses_other_formats(tmp_path):
    ref = _OpenAIReference(None)
    torch.save(ref.state_dict(), tmp_path / "ae.pt")
    with pytest.raises(SaebenchError, match="looks like an OpenAI"):
        load_dictionary_learning(tmp_path)
    native, _ = write_native(tmp_path / "n", arch="relu", d_in=D_IN, d_sae=D_SAE)
    with pytest.raises(SaebenchError, match="looks like a saebench native folder"):
        load_dictionary_learning(native)


# ---------------------------------------------------------------------------------------------
# wrong-format files, pickles, convert CLI


def test_loaders_name_the_format_they_were_given(tmp_path):
    ref = _sae_lens("standard")
    ref.save_model(tmp_path / "sl")
    with pytest.raises(SaebenchError, match="looks like a SAELens folder"):
        load_sparsify(tmp_path / "sl")
    with pytest.raises(SaebenchError, match="looks like a SAELens folder"):
        load_sae(f"dictionary_learning:{tmp_path / 'sl'}")
    torch.save({"W_enc": torch.zeros(2, 2)}, tmp_path / "x.pt")
    with pytest.raises(SaebenchError, match="not an OpenAI"):
        load_openai(tmp_path / "x.pt")


def test_pickled_objects_are_refused(tmp_path):
    import argparse

    torch.save({"pre_bias": torch.zeros(2), "obj": argparse.Namespace(x=1)}, tmp_path / "evil.pt")
    with pytest.raises(SaebenchError, match="weights_only"):
        load_openai(tmp_path / "evil.pt")


def test_convert_cli(tmp_path, capsys):
    from saebench.cli import main

    ref = _sae_lens("jumprelu")
    ref.save_model(tmp_path / "sl")
    assert main(["convert", str(tmp_path / "sl"), str(tmp_path / "out")]) == 0
    assert "jumprelu" in capsys.readouterr().out
    assert detect_format(tmp_path / "out") == "native"
    native = load_sae(str(tmp_path / "out"))
    x = _x()
    with torch.no_grad():
        assert torch.allclose(native.sae.encode(x), ref.encode(x), atol=1e-5)
    assert native.fingerprint == load_sae(str(tmp_path / "sl")).fingerprint
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    assert "error:" in capsys.readouterr().err
