"""Baseline SAEs: a floor under every number on the board (issue 20, item 5).

A metric means little until it is set against what no learning gives. Three kinds, built on the
zoo's activation set (393,216 tokens of the train split at the zoo's hook) so they share its
preprocessing:

- ``baseline-random-<arch>-2304-<k>``: each architecture as the project's trainer initialises it,
  with no training step (``train_sae(..., epochs=0)``: random unit-norm decoder rows, tied encoder,
  ``b_dec`` at the mean; JumpReLU thresholds at the quantile that fires 32/2304 of the time). TopK
  keeps k = 32; the others fire as their initialisation makes them (the L0 column says how much).
- ``baseline-pca-topk-1152-k32``: the d_model principal directions of the activations, each with
  both signs (1,152 latents), read and written through TopK k = 32 around the mean: x̂ = μ + the 32
  largest-|coefficient| principal components of x − μ. The best a k-sparse code in a *fixed*
  orthogonal basis of the data can do without learning a dictionary.
- ``baseline-neurons-topk-1152-k32``: the same with the standard basis (the residual stream's own
  dimensions, both signs): what the model's basis gives a k-sparse reader.

They are ordinary native SAEs (TopK / the trainer's architectures): every evaluator runs on them.
``cfg.json`` records ``baseline`` (``random-init``, ``pca``, ``neurons``); the board shows their rows
as baselines (by the ``baseline-`` name prefix) and never as the best row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saebench.results import BASELINE_PREFIX as PREFIX
from saebench.sae import NativeSAE, SAEConfig, save_native
from saebench.train import DEFAULT_HOOK, collect_train_acts, train_sae

RANDOM_ARCHS = ("topk", "batchtopk", "relu", "jumprelu", "gated")
WIDTH, K = 2304, 32


def baseline_names(d_model: int = 576) -> list[str]:
    """The names :func:`build_baselines` writes."""
    sparsity = {a: f"k{K}" if a in ("topk", "batchtopk") else f"l0_{K}" for a in RANDOM_ARCHS}
    return [f"{PREFIX}random-{a}-{WIDTH}-{sparsity[a]}" for a in RANDOM_ARCHS] + [
        f"{PREFIX}{kind}-topk-{2 * d_model}-k{K}" for kind in ("pca", "neurons")
    ]


def basis_topk(basis: torch.Tensor, mean: torch.Tensor, k: int, hook: str, model_name: str, kind: str) -> NativeSAE:
    """A TopK SAE reading and writing the rows of an orthonormal ``basis`` ``[d, d]`` with both signs
    (2d latents) around ``mean``: x̂ = mean + Σ over the k largest |⟨x − mean, b_i⟩| of ⟨x − mean, b_i⟩ b_i."""
    d = basis.shape[1]
    cfg = SAEConfig(architecture="topk", d_in=d, d_sae=2 * d, k=k, hook_name=hook, model_name=model_name)
    cfg_extra = {"baseline": kind, "trained_by": "saebench.baselines (no training)"}
    sae = NativeSAE(SAEConfig(**cfg.model_dump(), **cfg_extra))
    signed = torch.cat([basis, -basis]).float()  # [2d, d]
    with torch.no_grad():
        sae.W_dec.copy_(signed)
        sae.W_enc.copy_(signed.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(mean.float())
    return sae


def principal_basis(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows: the principal directions of ``acts`` by decreasing variance ``[d, d]``, the mean ``[d]``)."""
    x = acts.double()
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / max(1, x.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return vecs.flip(1).T.float(), mean.float()


def build_baselines(model: Any, out: Path, progress: bool = True) -> list[str]:
    """Write every baseline missing from ``out``; returns the names written."""
    from saebench.zoo import ZOO_SEED, ZOO_TOKENS

    out.mkdir(parents=True, exist_ok=True)
    names = baseline_names(model.d_model)
    todo = [n for n in names if not (out / n / "sae.safetensors").is_file()]
    if not todo:
        return []
    torch.manual_seed(ZOO_SEED)
    acts = collect_train_acts(model, DEFAULT_HOOK, ZOO_TOKENS, 128, ZOO_SEED, progress=progress)
    written = []
    for arch, name in zip(RANDOM_ARCHS, names, strict=False):
        if name in todo:
            sae, _ = train_sae(
                acts,
                arch,
                WIDTH,
                k=K,
                hook=DEFAULT_HOOK,
                model_name=model.name,
                seed=ZOO_SEED,
                epochs=0,
                progress=False,
            )
            sae.cfg = SAEConfig(**{**sae.cfg.model_dump(), "baseline": "random-init", "train_epochs": 0})
            save_native(sae, out / name, dtype=torch.float16)
            written.append(name)
    basis, mean = principal_basis(acts)
    for kind, rows in (("pca", basis), ("neurons", torch.eye(acts.shape[1]))):
        name = f"{PREFIX}{kind}-topk-{2 * acts.shape[1]}-k{K}"
        if name in todo:
            save_native(basis_topk(rows, mean, K, DEFAULT_HOOK, model.name, kind), out / name, dtype=torch.float16)
            written.append(name)
    return written
