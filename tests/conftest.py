"""Shared fixtures. Threads are set deliberately (2 cores: oversubscription costs 10x)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("SAEBENCH_TEST_THREADS", "2")))
HOOK = "blocks.6.hook_resid_post"
SMALL = {"tokens": 256, "ctx_len": 32, "batch_size": 4}


@pytest.fixture(scope="session")
def model():
    """The embedded SmolLM2-135M through transformer-lens (cached after the first load)."""
    from saebench.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def token_set(model):
    from saebench.data import build_token_set

    return build_token_set(model.tokenize, model.bos_id, SMALL["tokens"], SMALL["ctx_len"], seed=0)


class Identity(torch.nn.Module):
    """encode = x, decode = z: the oracle for fvu 0, delta_ce 0, kl 0, ce_loss_score 1."""

    def __init__(self, d: int = 576) -> None:
        super().__init__()
        self.d_in = self.d_sae = d

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class Constant(torch.nn.Module):
    """decode always returns a fixed vector (the mean activation gives fvu 1)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.d_in = value.numel()
        self.d_sae = 4
        self.register_buffer("value", value.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape[:-1], self.d_sae, dtype=x.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.value.to(z.dtype).expand(*z.shape[:-1], self.d_in)


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    """An empty activation cache, sharing the converted model folder with the default cache."""
    from saebench.io import cache_dir

    models = cache_dir() / "models"
    root = tmp_path / "cache"
    root.mkdir()
    if models.exists():
        (root / "models").symlink_to(models)
    monkeypatch.setenv("SAEBENCH_CACHE", str(root))
    return root


def write_native(folder: Path, arch: str = "relu", d_in: int = 576, d_sae: int = 64, seed: int = 0, **cfg_extra):
    """A random native SAE of ``arch`` saved at ``folder``; returns the module."""
    from saebench.sae import NativeSAE, SAEConfig, save_native

    g = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(
        architecture=arch,
        d_in=d_in,
        d_sae=d_sae,
        **{
            "hook_name": HOOK,
            "model_name": "smollm2-135m",
            "k": 8 if arch in ("topk", "batchtopk") else None,
            **cfg_extra,  # overrides the defaults above
        },
    )
    sae = NativeSAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return save_native(sae, folder), sae
