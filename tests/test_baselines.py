"""Baseline SAEs (saebench/baselines.py): the PCA / neuron-basis TopK readers and random inits."""

from __future__ import annotations

import torch

from saebench.baselines import baseline_names, basis_topk, principal_basis
from saebench.loading import load_sae
from saebench.sae import save_native
from saebench.train import train_sae


def _data(n: int = 4000, d: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    scales = torch.linspace(3.0, 0.1, d)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    return (torch.randn(n, d, generator=g) * scales) @ q.T + 2.0


def test_pca_basis_orders_directions_by_variance_and_full_k_reconstructs_exactly(tmp_path):
    x = _data()
    basis, mean = principal_basis(x)
    var = ((x - mean) @ basis.T).var(0)
    assert torch.all(var[:-1] >= var[1:] - 1e-4) and torch.allclose(basis @ basis.T, torch.eye(12), atol=1e-5)
    full = basis_topk(basis, mean, 12, "blocks.0.hook_resid_post", "m", "pca")
    assert torch.allclose(full.decode(full.encode(x)), x, atol=1e-4)  # one sign of each direction fires


def test_topk_keeps_the_k_largest_coefficients(tmp_path):
    """k = 3: x̂ = μ + the three principal components of x − μ with the largest |coefficient|,
    whatever their sign; the saved folder loads as an ordinary SAE and says it is a baseline."""
    x = _data()[:50]
    basis, mean = principal_basis(_data())
    sae = basis_topk(basis, mean, 3, "blocks.0.hook_resid_post", "m", "pca")
    coef = (x - mean) @ basis.T
    top = coef.abs().topk(3, dim=1).indices
    kept = torch.zeros_like(coef).scatter(1, top, coef.gather(1, top))
    assert torch.allclose(sae.decode(sae.encode(x)), mean + kept @ basis, atol=1e-4)
    assert int((sae.encode(x) != 0).sum(1).max()) == 3
    save_native(sae, tmp_path / "baseline-pca-topk-24-k3")
    loaded = load_sae(str(tmp_path / "baseline-pca-topk-24-k3"))
    assert loaded.sae.cfg.model_dump()["baseline"] == "pca" and loaded.sae.d_sae == 24


def test_random_baselines_are_the_trainers_initialisation():
    x = _data()
    sae, log = train_sae(x, "topk", 48, k=4, hook="blocks.0.hook_resid_post", model_name="m", epochs=0, progress=False)
    assert log["steps"] == 0 and int((sae.encode(x) != 0).sum(1).max()) == 4
    names = baseline_names(576)
    assert len(names) == 7 and len(set(names)) == 7 and all(n.startswith("baseline-") for n in names)
    assert "baseline-pca-topk-1152-k32" in names and "baseline-random-jumprelu-2304-l0_32" in names
