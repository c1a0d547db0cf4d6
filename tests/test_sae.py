"""SAE protocol, native format round trips, architectures and bad input (no model needed)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_native

from saebench.errors import SaebenchError
from saebench.loading import load_sae
from saebench.sae import ARCHITECTURES, load_native


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_native_round_trip(tmp_path, arch):
    folder, sae = write_native(tmp_path / arch, arch=arch, d_in=16, d_sae=32)
    loaded = load_native(folder)
    x = torch.randn(5, 16)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert torch.equal(loaded.decode(sae.encode(x)), sae.decode(sae.encode(x)))
    assert loaded.cfg == sae.cfg
    info = load_sae(str(folder))
    assert info.architecture == arch and info.hook_name == "blocks.6.hook_resid_post"


def test_encoders_follow_their_definitions(tmp_path):
    x = torch.randn(7, 16)
    _, topk = write_native(tmp_path / "t", arch="topk", d_in=16, d_sae=32)
    z = topk.encode(x)
    assert ((z != 0).sum(-1) <= 8).all() and (z >= 0).all()
    pre = topk.encode_pre(x)
    top = pre.topk(8, dim=-1).indices
    assert torch.equal(z.gather(-1, top), torch.relu(pre.gather(-1, top)))

    _, jr = write_native(tmp_path / "j", arch="jumprelu", d_in=16, d_sae=32)
    pre = jr.encode_pre(x)
    assert torch.equal(jr.encode(x), pre * (pre > jr.threshold))

    _, relu = write_native(tmp_path / "r", arch="relu", d_in=16, d_sae=32)
    assert torch.equal(relu.encode(x), torch.relu((x - relu.b_dec) @ relu.W_enc + relu.b_enc))

    _, gated = write_native(tmp_path / "g", arch="gated", d_in=16, d_sae=32)
    xin = x - gated.b_dec
    gate = (xin @ gated.W_enc + gated.b_gate) > 0
    mag = torch.relu(xin @ (gated.W_enc * gated.r_mag.exp()) + gated.b_mag)
    assert torch.allclose(gated.encode(x), gate * mag)


def test_act_scale_keeps_model_units(tmp_path):
    _, a = write_native(tmp_path / "a", arch="relu", d_in=16, d_sae=32)
    _, b = write_native(tmp_path / "b", arch="relu", d_in=16, d_sae=32, act_scale=4.0)
    x = torch.randn(3, 16)
    # b sees 4x; its decode divides by 4: same SAE in scaled coordinates gives x_hat / 4 + ...
    assert torch.allclose(b.decode(b.encode(x / 4.0)) * 4.0, a.decode(a.encode(x)), atol=1e-5)


def test_nan_weights_rejected(tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = write_native(tmp_path / "n", arch="relu", d_in=16, d_sae=32)
    t = load_file(folder / "sae.safetensors")
    t["W_dec"][0, 0] = float("nan")
    save_file(t, folder / "sae.safetensors")
    with pytest.raises(SaebenchError, match="W_dec has 1 NaN/Inf"):
        load_sae(str(folder))


def test_truncated_file_rejected(tmp_path):
    folder, _ = write_native(tmp_path / "t", arch="relu", d_in=16, d_sae=32)
    data = (folder / "sae.safetensors").read_bytes()
    (folder / "sae.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SaebenchError, match="not a readable safetensors file"):
        load_sae(str(folder))


def test_unknown_architecture_and_shape_mismatch(tmp_path):
    folder, _ = write_native(tmp_path / "u", arch="relu", d_in=16, d_sae=32)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "matryoshka-pro"}))
    with pytest.raises(SaebenchError, match="unknown architecture 'matryoshka-pro'"):
        load_sae(str(folder))
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 33}))
    with pytest.raises(SaebenchError, match="tensor W_enc has shape"):
        load_sae(str(folder))


def test_pickle_refused_unless_trusted(tmp_path):
    import argparse

    folder, sae = write_native(tmp_path / "p", arch="relu", d_in=16, d_sae=32)
    torch.save({"W_enc": sae.W_enc.detach(), "extra": argparse.Namespace(lr=1)}, folder / "ae.pt")
    with pytest.raises(SaebenchError, match="refusing.*--trust-pickle"):
        load_sae(str(folder / "ae.pt"))
    torch.save(sae.state_dict(), folder / "state.pt")
    loaded = load_sae(str(folder / "state.pt"))
    x = torch.randn(2, 16)
    assert torch.equal(loaded.sae.encode(x), sae.encode(x))


def test_factory_errors(tmp_path):
    with pytest.raises(SaebenchError, match="does not exist"):
        load_sae(f"python:{tmp_path}/missing.py:build")
    f = tmp_path / "arch.py"
    f.write_text("class Thing:\n    d_in = 4\n\ndef build():\n    return Thing()\n")
    with pytest.raises(SaebenchError, match="without encode, decode, d_sae"):
        load_sae(f"python:{f}:build")
    with pytest.raises(SaebenchError, match="has no attribute 'nope'"):
        load_sae(f"python:{f}:nope")
    with pytest.raises(SaebenchError, match="cannot import module"):
        load_sae("no_such_module_xyz:build")


def test_factory_loads_user_architecture(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text(
        "import torch\n"
        "class Mine(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.d_in = 8; self.d_sae = 16\n"
        "        self.W = torch.nn.Parameter(torch.eye(8, 16))\n"
        "    def encode(self, x): return torch.relu(x @ self.W)\n"
        "    def decode(self, z): return z @ self.W.T\n"
        "def build(): return Mine()\n"
    )
    info = load_sae(f"python:{f}:build")
    assert info.name == "build" and info.architecture == "Mine" and info.sae.d_sae == 16
    assert len(info.fingerprint) == 16


def test_factory_imports_a_module_beside_it(tmp_path):
    """``python:arch.py:build`` where arch.py does ``from layers import ...`` (a file beside it)."""
    (tmp_path / "layers_for_saebench_test.py").write_text(
        "import torch\n"
        "class Tied(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.d_in = 8; self.d_sae = 16\n"
        "        self.W = torch.nn.Parameter(torch.eye(8, 16))\n"
        "    def encode(self, x): return torch.relu(x @ self.W)\n"
        "    def decode(self, z): return z @ self.W.T\n"
    )
    f = tmp_path / "arch.py"
    f.write_text("from layers_for_saebench_test import Tied\n\ndef build():\n    return Tied()\n")
    assert load_sae(f"python:{f}:build").sae.d_sae == 16
