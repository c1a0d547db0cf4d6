"""Ground truth: how an SAE's latents match a known dictionary (model-free maths).

Used by ``saebench.evaluators.groundtruth`` on SAEs trained on a synthetic source
(:mod:`saebench.synthetic`), where the true features ``F [N, d]`` are known.

- :func:`cosines` — ``C[j, i] = cos(d_j, f_i)`` between decoder rows (model units) and features;
- :func:`hungarian_match` — the optimal one-to-one matching that maximises the summed ``|cos|``
  (``scipy.optimize.linear_sum_assignment``); its mean over the ``min(N, d_sae)`` matched pairs is
  the MCC of SAELens' synthetic benchmark (``sae_lens.synthetic.evals.mean_correlation_coefficient``,
  "Mechanistic Interpretability Should Prioritize Feature Consistency in SAEs", 2025);
- :func:`split_merge` — feature splitting and merging by decoder geometry at a cosine ``tau``:
  each latent is assigned to its best true feature (largest signed cosine) when that cosine is at
  least ``tau``; a true feature holding two or more latents is *split*; a latent with two or more
  true features at cosine ``>= tau`` is *merged* (it mixes them).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def cosines(dec: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``[d_sae, N]`` cosines between rows of ``dec [d_sae, d]`` and ``features [N, d]`` (float32)."""
    return F.normalize(dec.float(), dim=1) @ F.normalize(features.float(), dim=1).T


def hungarian_match(cos: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of latents (rows) to features (columns) maximising Σ|cos|:
    ``(latent index, feature index)`` arrays of length ``min(d_sae, N)``."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(1.0 - cos.abs().double().numpy())
    return rows, cols


def matched_abs_cos(cos: torch.Tensor) -> torch.Tensor:
    """Per true feature, the ``|cos|`` of its Hungarian-matched latent (NaN where unmatched,
    i.e. when there are fewer latents than features). The mean over matched features is the MCC."""
    rows, cols = hungarian_match(cos)
    out = torch.full((cos.shape[1],), float("nan"), dtype=torch.float64)
    out[torch.from_numpy(cols)] = cos.abs().double()[torch.from_numpy(rows), torch.from_numpy(cols)]
    return out


def split_merge(cos: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents per feature [N] long, features per latent [d_sae] long)`` at cosine ``tau``:
    latents assigned to each feature (its best match, cosine ≥ tau), and true features at cosine
    ≥ tau of each latent. Split: first ≥ 2; merged: second ≥ 2."""
    best, arg = cos.max(1)
    per_feature = torch.zeros(cos.shape[1], dtype=torch.long)
    ok = best >= tau
    per_feature.index_add_(0, arg[ok], torch.ones(int(ok.sum()), dtype=torch.long))
    per_latent = (cos >= tau).sum(1)
    return per_feature, per_latent
