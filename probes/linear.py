"""Logistic probes: batched 1-D Newton fits for every column at once, plus small sklearn probes.

1-D probes (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", sec. 4.4): for each
column i of a feature matrix X (latents, or residual channels for the baseline), fit
``p(y=1) = σ(w_i · x̃_i + b_i)`` on train, where ``x̃_i`` is column i standardized with its train
mean and std, by minimising

    mean_n [softplus(m) - y·m] + (l2 / 2) · w_i²,        m = w_i x̃_ni + b_i

(the intercept is not penalised; the small L2 keeps separable columns finite). This is exactly
sklearn's ``LogisticRegression(C=1 / (l2 · n_train))`` on the standardized column, which a test
checks. Every column is fit at once with damped Newton (IRLS) steps on ``[n, chunk]`` float64
tensors: the 2x2 Hessian per column is inverted in closed form, steps are halved per column
while they increase the objective, and converged columns leave the active set. Columns constant
on train ("dead" for this task) are skipped: their best probe is the intercept-only one.

Memory: columns are processed ``chunk`` at a time; the peak is about 12 float64 arrays of
``[n_train or n_test, chunk]`` (``~96 · n · chunk`` bytes; 4096 columns x 1024 examples ≈ 400 MB,
the default chunk on quick sizes is a few MB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class OneDResult:
    """Test CE per column (NaN where skipped), and the fitted probes on standardized columns."""

    test_loss: torch.Tensor  # [c] float64, NaN for skipped (constant-on-train) columns
    train_loss: torch.Tensor  # [c] float64, NaN for skipped columns
    live: torch.Tensor  # [c] bool
    prior_loss: float  # test CE of the intercept-only probe (what a dead column gives)
    iterations: int  # Newton iterations used by the slowest chunk
    w: torch.Tensor  # [c] float64 slope on the standardized column (NaN where skipped)
    b: torch.Tensor  # [c] float64 intercept
    mu: torch.Tensor  # [c] train mean used to standardize
    sd: torch.Tensor  # [c] train std used to standardize
    prior_b: float  # intercept of the intercept-only probe

    def example_losses(self, i: int | None, x_test: torch.Tensor, y_test: torch.Tensor) -> torch.Tensor:
        """Per-example test CE (float64 ``[n_test]``) of column ``i``'s probe on ``x_test [n_test, c]``;
        of the intercept-only probe when ``i`` is None. Their mean is ``test_loss[i]`` (or ``prior_loss``)."""
        y = y_test.double()
        if i is None:
            m = torch.full_like(y, self.prior_b)
        else:
            m = (x_test[:, i].double() - self.mu[i]) / self.sd[i] * self.w[i] + self.b[i]
        return F.softplus(m) - y * m

    def best(self) -> tuple[int | None, float]:
        """(index, loss) of the lowest *test* loss; (None, prior) when no column was live.

        Selection on test: optimistic (the minimum of many noisy test losses). Probing selects with
        :meth:`best_on_train` and only scores on test; this stays for diagnostics and old callers."""
        if not bool(self.live.any()):
            return None, self.prior_loss
        loss = torch.where(self.live, self.test_loss, torch.full_like(self.test_loss, math.inf))
        i = int(loss.argmin())
        return i, float(loss[i])

    def best_on_train(self) -> tuple[int | None, float]:
        """(index, *test* loss) of the column whose probe has the lowest *train* loss (first on ties);
        (None, prior) when no column was live. The choice never sees the test split, so the
        returned test loss is an honest estimate for the chosen column."""
        if not bool(self.live.any()):
            return None, self.prior_loss
        loss = torch.where(self.live, self.train_loss, torch.full_like(self.train_loss, math.inf))
        i = int(loss.argmin())
        return i, float(self.test_loss[i])


def _objective(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float) -> torch.Tensor:
    m = x * w + b
    return (F.softplus(m) - y[:, None] * m).mean(0) + 0.5 * l2 * w * w


def fit_1d(
    x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, max_iter: int = 50, tol: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Fit ``σ(w·x + b)`` for every column of standardized ``x [n, c]`` at once (float64).

    Returns ``(w [c], b [c], iterations)``. Newton steps with per-column step halving; a column
    stops once its gradient's max-norm is below ``tol``.
    """
    x, y = x.double(), y.double()
    n, c = x.shape
    p0 = float(y.mean().clamp(1e-6, 1 - 1e-6))
    w = torch.zeros(c, dtype=torch.float64)
    b = torch.full((c,), math.log(p0 / (1 - p0)), dtype=torch.float64)
    active = torch.arange(c)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        xa, wa, ba = x[:, active], w[active], b[active]
        m = xa * wa + ba
        p = torch.sigmoid(m)
        r = p - y[:, None]
        s = p * (1 - p)
        gw = (r * xa).mean(0) + l2 * wa
        gb = r.mean(0)
        done = torch.maximum(gw.abs(), gb.abs()) < tol
        if bool(done.all()):
            break
        sx = s * xa
        hww = (sx * xa).mean(0) + l2
        hwb = sx.mean(0)
        hbb = s.mean(0) + 1e-12
        det = (hww * hbb - hwb * hwb).clamp_min(1e-300)
        dw = (hbb * gw - hwb * gb) / det
        db = (hww * gb - hwb * gw) / det
        old = (F.softplus(m) - y[:, None] * m).mean(0) + 0.5 * l2 * wa * wa
        step = torch.ones_like(wa)
        for _ in range(30):  # per-column backtracking: halve where the objective went up
            new = _objective(xa, y, wa - step * dw, ba - step * db, l2)
            bad = new > old + 1e-12 * old.abs()
            if not bool(bad.any()):
                break
            step = torch.where(bad, step * 0.5, step)
        w[active] = wa - step * dw
        b[active] = ba - step * db
        active = active[~done]
    return w, b, it


def ce(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) per column of ``σ(w·x + b)`` on ``x [n, c]``, labels ``y [n]``."""
    m = x.double() * w + b
    return (F.softplus(m) - y.double()[:, None] * m).mean(0)


def best_single_column(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    l2: float = 1e-3,
    chunk: int = 4096,
    max_iter: int = 50,
) -> OneDResult:
    """1-D probe on every column of ``x_train [n, c]`` in chunks; test CE per column."""
    c = x_train.shape[1]
    yt, ye = y_train.double(), y_test.double()
    p0 = float(yt.mean().clamp(1e-6, 1 - 1e-6))
    b0 = math.log(p0 / (1 - p0))
    prior = float((F.softplus(torch.tensor(b0)) - ye * b0).mean())
    test_loss = torch.full((c,), math.nan, dtype=torch.float64)
    train_loss = torch.full((c,), math.nan, dtype=torch.float64)
    ws, bs, mus, sds = (torch.full((c,), math.nan, dtype=torch.float64) for _ in range(4))
    live = torch.zeros(c, dtype=torch.bool)
    iters = 0
    for s in range(0, c, chunk):
        xtr = x_train[:, s : s + chunk].double()
        mu = xtr.mean(0)
        sd = xtr.std(0, unbiased=False)
        ok = sd > 1e-12 * (1 + mu.abs())
        idx = ok.nonzero().squeeze(-1)
        if idx.numel() == 0:
            continue
        mu, sd = mu[idx], sd[idx]
        ztr = (xtr[:, idx] - mu) / sd
        zte = (x_test[:, s : s + chunk][:, idx].double() - mu) / sd
        w, b, it = fit_1d(ztr, yt, l2, max_iter)
        iters = max(iters, it)
        test_loss[s + idx] = ce(zte, ye, w, b)
        train_loss[s + idx] = ce(ztr, yt, w, b)
        ws[s + idx], bs[s + idx], mus[s + idx], sds[s + idx] = w, b, mu, sd
        live[s + idx] = True
    return OneDResult(test_loss, train_loss, live, prior, iters, ws, bs, mus, sds, b0)


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = train.mean(0)
    sd = train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return (train - mu) / sd, (test - mu) / sd


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def topk_accuracy(
    z_train: torch.Tensor,
    y_train: torch.Tensor,
    z_test: torch.Tensor,
    y_test: torch.Tensor,
    ks: list[int] | tuple[int, ...] = (1, 2, 5),
) -> dict[int, dict[str, object]]:
    """SAEBench-style top-k probing: the k latents with the largest |mean_pos - mean_neg| on train,
    a logistic probe on them (standardized, sklearn, C=1), test accuracy and CE per k, and which
    test examples it got right (``correct``: a 0/1 list)."""
    from sklearn.linear_model import LogisticRegression

    yt = y_train.bool()
    diff = (z_train[yt].double().mean(0) - z_train[~yt].double().mean(0)).abs()
    diff = torch.nan_to_num(diff, nan=0.0)
    order = diff.argsort(descending=True)
    ytr, yte = y_train.numpy().astype(int), y_test.numpy().astype(int)
    out: dict[int, dict[str, object]] = {}
    for k in ks:
        idx = order[:k]
        if float(diff[idx].max()) == 0.0:  # no latent separates the class means at all
            out[k] = {"accuracy": None, "loss": None, "latents": [], "correct": None}
            continue
        xtr, xte = _standardize(z_train[:, idx].double().numpy(), z_test[:, idx].double().numpy())
        clf = LogisticRegression(C=1.0, max_iter=1000).fit(xtr, ytr)
        p = clf.predict_proba(xte)[:, 1]
        correct = ((p > 0.5).astype(int) == yte).astype(float)
        out[k] = {
            "accuracy": float(correct.mean()),
            "loss": _log_loss(yte, p),
            "latents": [int(i) for i in idx],
            "correct": correct.tolist(),
        }
    return out


def full_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    seed: int = 0,
    n_cs: int = 7,
    max_folds: int = 5,
) -> dict[str, Any]:
    """Full-width logistic probe (sklearn, standardized inputs): the inverse L2 strength C is
    chosen from ``logspace(-4, 2, n_cs)`` by stratified k-fold CV log-loss on train only, then
    refit on all of train; test CE and accuracy. Never selects anything on test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    ytr, yte = y_train.numpy().astype(int), y_test.numpy().astype(int)
    folds = min(max_folds, int(np.bincount(ytr, minlength=2).min()))
    if folds < 2:
        return {"loss": None, "accuracy": None, "C": None, "losses": None, "correct": None}
    xtr_raw, xte_raw = x_train.double().numpy(), x_test.double().numpy()
    cs = np.logspace(-4, 2, n_cs)
    cv_loss = np.zeros(n_cs)
    for tr, va in StratifiedKFold(folds, shuffle=True, random_state=seed).split(xtr_raw, ytr):
        a, b = _standardize(xtr_raw[tr], xtr_raw[va])
        for j, c in enumerate(cs):
            clf = LogisticRegression(C=float(c), max_iter=2000).fit(a, ytr[tr])
            cv_loss[j] += _log_loss(ytr[va], clf.predict_proba(b)[:, 1]) * len(va)
    best_c = float(cs[int(cv_loss.argmin())])
    xtr, xte = _standardize(xtr_raw, xte_raw)
    p = LogisticRegression(C=best_c, max_iter=2000).fit(xtr, ytr).predict_proba(xte)[:, 1]
    pc = np.clip(p, 1e-15, 1 - 1e-15)
    losses = -(yte * np.log(pc) + (1 - yte) * np.log(1 - pc))
    correct = ((p > 0.5).astype(int) == yte).astype(float)
    return {
        "loss": float(losses.mean()),
        "accuracy": float(correct.mean()),
        "C": best_c,
        "losses": losses.tolist(),
        "correct": correct.tolist(),
    }
