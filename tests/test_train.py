"""The trainer: every architecture learns planted sparse features; penalised ones reach target L0."""

from __future__ import annotations

import pytest
import torch

from saebench.sae import load_native, save_native
from saebench.train import train_sae


def _planted(n: int = 16384, d: int = 32, n_feat: int = 64, active: int = 4, seed: int = 0) -> torch.Tensor:
    """x = sum of `active` random unit directions with positive magnitudes (+ small noise)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_feat, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_feat, generator=g).argsort(dim=1)[:, :active]
    mags = torch.zeros(n, n_feat).scatter_(1, idx, torch.rand(n, active, generator=g) + 0.5)
    return mags @ dirs + 0.01 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu", "gated"])
def test_each_architecture_learns(arch, tmp_path):
    torch.manual_seed(0)
    acts = _planted()
    sae, log = train_sae(
        acts,
        arch,
        128,
        k=4,
        hook="blocks.0.hook_resid_post",
        model_name="toy",
        epochs=30,
        batch_tokens=1024,
        progress=False,
    )
    with torch.no_grad():
        z = sae.encode(acts)
        xhat = sae.decode(z)
    fvu = float(((acts - xhat) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum())
    l0 = float((z != 0).sum(-1).float().mean())
    # better than predicting the mean; L1/gated shrinkage costs fidelity at this L0 (Gao et al.'s point)
    assert fvu < (0.5 if arch in ("topk", "batchtopk", "jumprelu") else 0.95), (arch, fvu, log)
    # near the target of 4 (steered, or by construction); JumpReLU's steering undershoots its target
    # (L0 1.9 here, 14 of 32 in the zoo: docs/zoo.md, open), so it is only held to stay sparse and alive
    low = 1.0 if arch == "jumprelu" else 2.0
    assert low < l0 < 8.0, (arch, l0, log)
    if arch == "batchtopk":
        assert float(sae.threshold.detach()) > 0  # inference uses the learned global threshold
    save_native(sae, tmp_path / arch, dtype=torch.float16)
    again = load_native(tmp_path / arch)
    assert again.cfg.trained_by == "saebench.train.train_sae" and again.cfg.act_scale == sae.cfg.act_scale


def test_training_is_deterministic():
    acts = _planted(n=4096)
    a, _ = train_sae(acts, "topk", 64, k=4, hook="h", model_name="toy", epochs=2, batch_tokens=512, progress=False)
    b, _ = train_sae(acts, "topk", 64, k=4, hook="h", model_name="toy", epochs=2, batch_tokens=512, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
