"""Model-free parts of the unlearning evaluation (``--evals unlearning``): SAEBench's latent
selection, its clamp intervention on the codes, the sweep grid and the choice of a setting.

SAEBench 0.6.0 (``evals/unlearning``, after Farrell et al. 2024, "Applying sparse autoencoders to
unlearn knowledge in language models"):

- **selection** (``feature_activation.get_top_features``): a latent's *sparsity* on a text set is
  the fraction of its (non-BOS/pad/EOS) tokens where it is > 0. Latents whose retain sparsity is
  at least ``retain_threshold`` are dropped; the rest are ranked by forget sparsity, highest first,
  and those that never fire on the forget set are dropped. The first ``n`` are clamped.
- **clamp** (``intervention.anthropic_clamp_resid_SAE_features``): at every position but the first,
  each selected latent that is > 0 is set to ``-multiplier``; the hook's activation becomes
  ``x - decode(z) + decode(z')`` (the SAE's error term is kept, so the rest of the activation is
  untouched).
- **sweep** (``eval.run_metrics_calculation``): every retain threshold x number of latents x
  multiplier.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def firing_fraction(z: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-latent count of kept positions where the latent is > 0 (SAEBench's test), and the
    number of kept positions: ``z [..., d_sae]``, ``keep`` a bool mask of ``z.shape[:-1]``."""
    fired = (z > 0) & keep.unsqueeze(-1)
    return fired.reshape(-1, z.shape[-1]).sum(0).to(torch.float64), int(keep.sum())


def select_latents(forget_freq: torch.Tensor, retain_freq: torch.Tensor, retain_threshold: float) -> list[int]:
    """SAEBench's ``get_top_features``: latents with retain sparsity below ``retain_threshold``
    and forget sparsity above 0, by forget sparsity, highest first. Ties go to the lower index
    (SAEBench's ``argsort()[::-1]`` leaves them to numpy's sort: the one place we fix an order)."""
    f = forget_freq.double().cpu()
    ok = (retain_freq.double().cpu() < retain_threshold) & (f > 0)
    idx = ok.nonzero().flatten().tolist()
    return sorted(idx, key=lambda i: (-float(f[i]), i))


def clamp_codes(z: torch.Tensor, latents: Sequence[int], multiplier: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z', hit)``: ``z`` with each of ``latents`` set to ``-multiplier`` where it is > 0, and
    ``hit`` (``z.shape[:-1]``, bool) where at least one was. Elsewhere ``z'`` equals ``z`` exactly."""
    if not latents:
        return z, torch.zeros(z.shape[:-1], dtype=torch.bool, device=z.device)
    idx = torch.as_tensor(list(latents), dtype=torch.long, device=z.device)
    sel = z.index_select(-1, idx)
    on = sel > 0
    out = z.clone()
    out[..., idx] = torch.where(on, torch.full_like(sel, -float(multiplier)), sel)
    return out, on.any(-1)


@torch.no_grad()
def clamp_edit(
    sae: Any,
    x: torch.Tensor,
    keep: torch.Tensor,
    latents: Sequence[int],
    multiplier: float,
    z: torch.Tensor | None = None,
    xhat: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAEBench's clamp as an additive edit of the hook activation ``x [..., d]``:
    ``(delta, hit)`` with ``x + delta = x - decode(z) + decode(z')`` at the positions ``hit`` (kept
    positions, ``keep`` a bool mask of ``x.shape[:-1]``, where a selected latent is > 0) and
    ``delta = 0`` exactly elsewhere. ``z = encode(x)`` and ``xhat = decode(z)`` may be passed in when
    several settings share one encode."""
    z = sae.encode(x) if z is None else z
    xhat = sae.decode(z) if xhat is None else xhat
    z2, hit = clamp_codes(z, latents, multiplier)
    hit = hit & keep.to(hit.device)
    if not bool(hit.any()):
        return torch.zeros_like(xhat), hit
    delta = torch.where(hit.unsqueeze(-1), sae.decode(z2) - xhat, torch.zeros_like(xhat))
    return delta, hit


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: the latents it clamps (chosen at ``retain_threshold``, the first
    ``n_latents`` of them: fewer where fewer qualify) and the clamp value ``-multiplier``."""

    retain_threshold: float
    n_latents: int
    multiplier: float
    latents: tuple[int, ...]

    def key(self) -> tuple[tuple[int, ...], float]:
        """Settings with the same key are the same intervention (computed once)."""
        return self.latents, self.multiplier


def sweep(
    forget_freq: torch.Tensor,
    retain_freq: torch.Tensor,
    thresholds: Sequence[float],
    n_latents: Sequence[int],
    multipliers: Sequence[float],
) -> list[Setting]:
    """Every retain threshold x number of latents x multiplier, in SAEBench's order."""
    out = []
    for thr in thresholds:
        ranked = select_latents(forget_freq, retain_freq, thr)
        for n, m in itertools.product(n_latents, multipliers):
            out.append(Setting(float(thr), int(n), float(m), tuple(ranked[: int(n)])))
    return out


def choose(
    forget_increase: Sequence[float], retain_increase: Sequence[float], retain_clean: float, tolerance: float
) -> int | None:
    """Index of the setting with the largest forget-side loss increase among those whose
    retain-side increase is at most ``tolerance x retain_clean`` (our loss analogue of SAEBench's
    "side-effect accuracy >= 0.99"), or None when none qualifies or none raises the forget loss.
    Ties go to the earlier setting (smaller threshold, fewer latents, smaller multiplier)."""
    bound = tolerance * retain_clean
    best, best_val = None, 0.0
    for i, (f, r) in enumerate(zip(forget_increase, retain_increase, strict=True)):
        if not (math.isfinite(f) and math.isfinite(r)) or r > bound:
            continue
        if f > best_val:
            best, best_val = i, f
    return best
