"""1-D sparse probing of one SAE on one task's cached activations (Gao et al. 2024, sec. 4.2).

``pool`` turns the token-level hook activations of a task (``TaskActs``, BOS and padding already
removed) into one vector per example, optionally through the SAE's ``encode`` first: latents are
pooled, not the residual (``mean`` over the example's tokens, or its ``last`` token). Tokens are
encoded ``token_chunk`` at a time, so the encoder's dense output never exceeds
``token_chunk x d_sae`` floats; the pooled matrix is ``n_examples x d_sae`` float32.

``score_task`` then fits the 1-D probes on every latent (``probes.linear.best_single_column``),
chooses the latent whose probe has the lowest *train* loss and scores only that one on test
(:func:`heldout_probe`), runs the identical procedure on shuffled train labels to get the task's
noise floor at this SAE's candidate count, fits the top-k probes (latents chosen on train), and
(memoised per task activations, since they do not depend on the SAE) the residual baselines: the
single residual channel chosen the same way with its own floor, and a full-width residual probe
with cross-validated L2 (train only). Nothing is ever selected on test.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class HeldOut:
    """A 1-D probe chosen on train and scored on test, with its shuffled-label noise floor.

    ``losses`` are the chosen probe's per-test-example CE; ``floor_losses`` the per-example CE
    averaged over the ``n_perm`` shuffled-label repetitions of the whole procedure (fit every
    column on permuted train labels, choose by train loss, score on the true test labels);
    ``perm_means`` the mean test CE of each repetition. ``p_value`` = (1 + #{perm_means <=
    loss}) / (1 + n_perm): how often noise did at least as well. None fields: no live column,
    or ``n_perm`` = 0."""

    column: int | None
    train_loss: float | None
    losses: torch.Tensor
    prior_losses: torch.Tensor
    floor_losses: torch.Tensor | None
    perm_means: list[float]
    n_live: int
    iterations: int

    @property
    def loss(self) -> float:
        return float(self.losses.mean())

    @property
    def floor(self) -> float | None:
        return float(self.floor_losses.mean()) if self.floor_losses is not None else None

    @property
    def p_value(self) -> float | None:
        if not self.perm_means:
            return None
        return (1 + sum(m <= self.loss for m in self.perm_means)) / (1 + len(self.perm_means))


def heldout_probe(
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    x_te: torch.Tensor,
    y_te: torch.Tensor,
    l2: float,
    chunk: int,
    max_iter: int = 50,
    n_perm: int = 0,
    perm_seed: int = 0,
) -> HeldOut:
    """Fit a 1-D probe on every column of ``x_tr``, choose the column with the lowest train loss,
    score it on test; repeat on ``n_perm`` seeded permutations of the train labels for the noise
    floor (same columns, same test set: the floor is what this procedure gives at this candidate
    count when the labels carry no information). Dead columns are skipped; with none live the
    chosen probe is the intercept-only one and so is the floor."""
    one = best_single_column(x_tr, y_tr, x_te, y_te, l2=l2, chunk=chunk, max_iter=max_iter)
    col, _ = one.best_on_train()
    losses = one.example_losses(col, x_te, y_te)
    prior = one.example_losses(None, x_te, y_te)
    floor, means = None, []
    if n_perm > 0:
        g = torch.Generator().manual_seed(perm_seed)
        floor = torch.zeros_like(losses)
        for _ in range(n_perm):
            yp = y_tr[torch.randperm(y_tr.numel(), generator=g)]
            r = best_single_column(x_tr, yp, x_te, y_te, l2=l2, chunk=chunk, max_iter=max_iter)
            j, _ = r.best_on_train()
            el = r.example_losses(j, x_te, y_te)
            floor += el
            means.append(float(el.mean()))
        floor /= n_perm
    train = _none_if_nan(float(one.train_loss[col])) if col is not None else None
    return HeldOut(col, train, losses, prior, floor, means, int(one.live.sum()), one.iterations)


def task_seed(seed: int, task: str) -> int:
    """A permutation seed per (run seed, task): every SAE probed on a task sees the same shuffles."""
    return (seed * 1_000_003 + zlib.crc32(task.encode())) % (2**63)


def _floor_row(h: HeldOut, prefix: str, alpha: float) -> dict[str, Any]:
    p = h.p_value
    return {
        f"{prefix}noise_floor": h.floor,
        f"{prefix}floor_p_value": p,
        f"{prefix}at_floor": (p > alpha) if p is not None else None,
    }


def _gain(h: HeldOut) -> list[float] | None:
    """Per-test-example floor CE minus the chosen probe's CE (nats; > 0: better than noise)."""
    return (h.floor_losses - h.losses).tolist() if h.floor_losses is not None else None


def baselines(
    key: tuple[Any, ...],
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    x_te: torch.Tensor,
    y_te: torch.Tensor,
    l2: float,
    chunk: int,
    seed: int,
    n_perm: int = 0,
    perm_seed: int = 0,
    alpha: float = 0.05,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Residual baselines for one task (memoised by ``key``: they do not depend on the SAE): the
    summary row, and per-test-example losses / correctness (lists; None where undefined). The
    1-D channel is chosen on train exactly as an SAE latent is (with its own noise floor at the
    residual's candidate count); the full-width probe chooses its L2 by CV on train."""
    if key not in _BASELINES:
        one = heldout_probe(x_tr, y_tr, x_te, y_te, l2, chunk, n_perm=n_perm, perm_seed=perm_seed)
        full = full_probe(x_tr, y_tr, x_te, y_te, seed=seed)
        per = {
            "resid_1d_heldout_loss": one.losses.tolist(),
            "resid_1d_gain": _gain(one),
            "resid_full_loss": full["losses"],
            "resid_full_accuracy": full["correct"],
        }
        row = {
            "resid_1d_heldout_loss": one.loss,
            "resid_1d_channel": one.column,
            **_floor_row(one, "resid_1d_", alpha),
            "resid_full_loss": full["loss"],
            "resid_full_accuracy": full["accuracy"],
            "resid_full_C": full["C"],
        }
        _BASELINES[key] = (row, per)
    row, per = _BASELINES[key]
    return dict(row), dict(per)


def score_task(
    z: torch.Tensor,
    y: torch.Tensor,
    n_train: int,
    l2: float,
    chunk: int,
    ks: list[int],
    max_iter: int = 50,
    n_perm: int = 0,
    perm_seed: int = 0,
    alpha: float = 0.05,
) -> tuple[dict[str, Any], dict[str, list[float] | None], dict[str, float]]:
    """Held-out 1-D latent probe with its noise floor, top-k accuracy and latents scored, for
    pooled latents ``z [n, d_sae]`` (train rows first); per-test-example values behind them (CE of
    the chosen probe, of the prior, floor minus chosen CE, 0/1 correctness of each top-k probe;
    None where undefined); and the seconds spent on the 1-D (with floor) and top-k fits.
    A task with no live latent scores its prior (intercept-only) loss, and so does its floor."""
    z_tr, z_te, y_tr, y_te = z[:n_train], z[n_train:], y[:n_train], y[n_train:]
    t0 = time.perf_counter()
    h = heldout_probe(z_tr, y_tr, z_te, y_te, l2, chunk, max_iter, n_perm, perm_seed)
    t_1d = time.perf_counter() - t0
    t0 = time.perf_counter()
    top = (
        topk_accuracy(z_tr, y_tr, z_te, y_te, ks)
        if h.column is not None
        else {k: {"accuracy": None, "loss": None, "latents": [], "correct": None} for k in ks}
    )
    t_topk = time.perf_counter() - t0
    per = {
        "heldout_probe_loss": h.losses.tolist(),
        "probe_gain": _gain(h),
        "prior_loss": h.prior_losses.tolist(),
        **{f"top_{k}_accuracy": top[k]["correct"] for k in ks},
    }
    return (
        {
            "heldout_probe_loss": h.loss,
            "best_latent": h.column,
            "best_latent_train_loss": h.train_loss,
            **_floor_row(h, "", alpha),
            "prior_loss": _mean(per["prior_loss"]),
            "n_latents_scored": h.n_live,
            "newton_iterations": h.iterations,
            **{f"top_{k}_accuracy": top[k]["accuracy"] for k in ks},
            **{f"top_{k}_latents": top[k]["latents"] for k in ks},
        },
        per,
        {"probe_1d_s": t_1d, "probe_topk_s": t_topk},
    )


def _mean(values: list[float] | None) -> float | None:
    return float(sum(values) / len(values)) if values else None
