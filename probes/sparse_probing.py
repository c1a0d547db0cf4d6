"""1-D sparse probing of one SAE on one task's cached activations (Gao et al. 2024, sec. 4.4).

``pool`` turns the token-level hook activations of a task (``TaskActs``, BOS and padding already
removed) into one vector per example, optionally through the SAE's ``encode`` first: latents are
pooled, not the residual (``mean`` over the example's tokens, or its ``last`` token). Tokens are
encoded ``token_chunk`` at a time, so the encoder's dense output never exceeds
``token_chunk x d_sae`` floats; the pooled matrix is ``n_examples x d_sae`` float32.

``score_task`` then fits the 1-D probes on every latent (``probes.linear.best_single_column``),
the top-k probes, and (memoised per task activations, since they do not depend on the SAE) the
residual baselines: the best single residual channel with the same 1-D code, and a full-width
residual probe with cross-validated L2 (train only).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from saebench.errors import SaebenchError
from saebench.probes.linear import best_single_column, full_probe, topk_accuracy

_BASELINES: dict[tuple[Any, ...], dict[str, Any]] = {}


def pool(
    acts: torch.Tensor,
    lengths: torch.Tensor,
    pooling: str,
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    token_chunk: int = 1024,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-example pooled ``fn(acts)`` (identity when ``fn`` is None), float32 ``[n, d_out]``."""
    n = lengths.numel()
    ends = lengths.cumsum(0)
    if pooling == "last":
        rows = acts[ends - 1]
        chunks = [
            fn(rows[s : s + token_chunk].to(device)) if fn else rows[s : s + token_chunk]
            for s in range(0, n, token_chunk)
        ]
        return torch.cat([c.float().cpu() for c in chunks])
    if pooling != "mean":
        raise SaebenchError(f"pooling {pooling!r} is unknown; use mean or last")
    seg = torch.repeat_interleave(torch.arange(n), lengths)
    out: torch.Tensor | None = None
    for s in range(0, acts.shape[0], token_chunk):
        x = acts[s : s + token_chunk]
        z = (fn(x.to(device)) if fn else x).float().cpu()
        if out is None:
            out = torch.zeros(n, z.shape[-1], dtype=torch.float32)
        out.index_add_(0, seg[s : s + token_chunk], z)
    assert out is not None
    return out / lengths.clamp_min(1).float()[:, None]


def encoder(sae: Any, label: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``sae.encode`` under no_grad, checked for shape and finiteness (one-line errors)."""
    d_sae = int(sae.d_sae)

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = sae.encode(x)
        if z.shape[-1] != d_sae or z.shape[0] != x.shape[0]:
            raise SaebenchError(
                f"SAE {label}: encode gave shape {list(z.shape)} for input {list(x.shape)}; expected [..., {d_sae}]"
            )
        if not bool(torch.isfinite(z).all()):
            raise SaebenchError(f"SAE {label} produced NaN/Inf latents on probing examples; check its weights")
        return z

    return fn


def _none_if_nan(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def baselines(
    key: tuple[Any, ...],
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    x_te: torch.Tensor,
    y_te: torch.Tensor,
    l2: float,
    chunk: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Residual baselines for one task (memoised by ``key``: they do not depend on the SAE): the
    summary row, and per-test-example losses / correctness (lists; None where undefined)."""
    if key not in _BASELINES:
        one = best_single_column(x_tr, y_tr, x_te, y_te, l2=l2, chunk=chunk)
        ch, _ = one.best()
        full = full_probe(x_tr, y_tr, x_te, y_te, seed=seed)
        per = {
            "resid_1d_loss": one.example_losses(ch, x_te, y_te).tolist(),
            "resid_full_loss": full["losses"],
            "resid_full_accuracy": full["correct"],
        }
        row = {
            "resid_1d_loss": _mean(per["resid_1d_loss"]),
            "resid_1d_channel": ch,
            "resid_full_loss": full["loss"],
            "resid_full_accuracy": full["accuracy"],
            "resid_full_C": full["C"],
        }
        _BASELINES[key] = (row, per)
    row, per = _BASELINES[key]
    return dict(row), dict(per)


def _mean(values: list[float] | None) -> float | None:
    return float(sum(values) / len(values)) if values else None


def score_task(
    z: torch.Tensor, y: torch.Tensor, n_train: int, l2: float, chunk: int, ks: list[int], max_iter: int = 50
) -> tuple[dict[str, Any], dict[str, list[float] | None], dict[str, float]]:
    """Best 1-D latent probe, top-k accuracy, latents scored, for pooled latents ``z [n, d_sae]``;
    per-test-example values behind them (CE of the best probe and of the prior, 0/1 correctness of
    each top-k probe; None where undefined); and the seconds spent on the 1-D and top-k fits.
    A task with no live latent scores its prior (intercept-only) loss."""
    z_tr, z_te, y_tr, y_te = z[:n_train], z[n_train:], y[:n_train], y[n_train:]
    t0 = time.perf_counter()
    one = best_single_column(z_tr, y_tr, z_te, y_te, l2=l2, chunk=chunk, max_iter=max_iter)
    t_1d = time.perf_counter() - t0
    best, _ = one.best()
    t0 = time.perf_counter()
    top = (
        topk_accuracy(z_tr, y_tr, z_te, y_te, ks)
        if best is not None
        else {k: {"accuracy": None, "loss": None, "latents": [], "correct": None} for k in ks}
    )
    t_topk = time.perf_counter() - t0
    per = {
        "probe_loss": one.example_losses(best, z_te, y_te).tolist(),
        "prior_loss": one.example_losses(None, z_te, y_te).tolist(),
        **{f"top_{k}_accuracy": top[k]["correct"] for k in ks},
    }
    return (
        {
            "probe_loss": _mean(per["probe_loss"]),
            "best_latent": best,
            "best_latent_train_loss": _none_if_nan(float(one.train_loss[best])) if best is not None else None,
            "prior_loss": _mean(per["prior_loss"]),
            "n_latents_scored": int(one.live.sum()),
            "newton_iterations": one.iterations,
            **{f"top_{k}_accuracy": top[k]["accuracy"] for k in ks},
            **{f"top_{k}_latents": top[k]["latents"] for k in ks},
        },
        per,
        {"probe_1d_s": t_1d, "probe_topk_s": t_topk},
    )
