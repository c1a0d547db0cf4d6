"""k-sparse SAE probes and full-width baselines with cross-validated L2 (Kantamneni et al. 2025).

Kantamneni, Engels, Rajamanoharan, Tegmark, Nanda 2025, "Are Sparse Autoencoders Useful? A Case
Study in Sparse Probing" (the ``sae-probes`` package) probe every binary dataset with

- **latent selection**: divide each SAE latent by its mean absolute non-zero activation on train
  (``x / (Σ|x| / #{x ≠ 0} + 1e-6)``, their ``mean_act_normalization``), rank latents by
  ``|mean_pos - mean_neg|`` of the normalized latents on train, keep the top ``k``;
- **probe**: L2 logistic regression on the *raw* (unstandardized) features, intercept unpenalized,
  i.e. minimise ``C · Σ_i [softplus(m_i) - y_i m_i] + ½‖w‖²`` (sklearn's objective), with ``C``
  from ``logspace(5, -5, 10)`` chosen by validation ROC AUC (:func:`cv_splits`: leave-two-out for
  n ≤ 12, stratified 6-fold for n < 128, else one hold-out of the last ``min(20 %, 100)``
  examples; only splits whose validation part holds both classes), then refit on all of train;
- **score**: test ROC AUC. The baseline is the same probe on the full residual vector.

:func:`fit_cv` fits every (C, split) problem of one probe at once with damped Newton steps on
``[B, d+1, d+1]`` float64 Hessians (B = #C x #splits), the batched counterpart of
:mod:`saebench.probes.linear`'s 1-D engine. When ``d > n`` the features are first projected on
the row space of the training matrix (``X = U S Vᵀ``, features ``X V``): the L2 optimum lies in
that span, so the fit and every prediction are unchanged while the Hessian shrinks to
``(n+1) x (n+1)``. A test holds :func:`fit_logistic` to sklearn's ``LogisticRegression``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: sae-probes' grid of inverse L2 strengths (``np.logspace(5, -5, 10)``), largest first
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(5, -5, 10))


def mean_act_normalize(z: torch.Tensor) -> torch.Tensor:
    """``z / (mean |non-zero value| per column + 1e-6)`` (sae-probes' ``mean_act_normalization``)."""
    col_sums = z.abs().sum(0)
    nonzero = (z != 0).sum(0)
    col_means = col_sums / (nonzero + 1e-6)
    return z / (col_means + 1e-6)


def rank_latents(z_train: torch.Tensor, y_train: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Latent indices by decreasing ``|mean_pos - mean_neg|`` on train (after mean-act normalization)."""
    zn = mean_act_normalize(z_train.double()) if normalize else z_train.double()
    yb = y_train.bool()
    diff = zn[yb].mean(0) - zn[~yb].mean(0)
    return torch.argsort(torch.nan_to_num(diff.abs(), nan=0.0), descending=True, stable=True)


def cv_splits(y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validation splits of sae-probes' ``get_cv``/``get_splits`` (see module doc); [] for n ≤ 3."""
    from sklearn.model_selection import LeavePOut, StratifiedKFold

    n = len(y)
    if n <= 3:
        return []
    if n <= 12:
        splits = list(LeavePOut(2).split(np.zeros(n), y))
    elif n < 128:
        with warnings.catch_warnings():  # tiny minority classes: fewer members than folds
            warnings.simplefilter("ignore", UserWarning)
            splits = list(StratifiedKFold(n_splits=6, shuffle=True, random_state=seed).split(np.zeros(n), y))
    else:
        val = min(int(0.2 * n), 100)
        splits = [(np.arange(n - val), np.arange(n - val, n))]
    return [(tr, va) for tr, va in splits if len(np.unique(y[va])) == 2]


def _objective(
    x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    logits = torch.einsum("nd,bd->bn", x, w) + b[:, None]
    return (m * (F.softplus(logits) - y * logits)).sum(1) + 0.5 * lam * (w * w).sum(1)


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
    inv_c: torch.Tensor,
    max_iter: int = 100,
    tol: float = 1e-9,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """B L2 logistic regressions on one feature matrix at once (float64 damped Newton).

    Problem ``b`` minimises ``Σ_i masks[b, i] · [softplus(m_i) - y_i m_i] + ½ inv_c[b] ‖w‖²`` with
    ``m_i = x_i · w + c`` (intercept ``c`` unpenalized): sklearn's ``LogisticRegression(C=1/inv_c)``
    on the rows where the mask is 1. Returns ``(W [B, d], c [B], iterations)``.
    """
    x, y, masks, lam = x.double(), y.double(), masks.double(), inv_c.double()
    n_b, d = masks.shape[0], x.shape[1]
    tot = masks.sum(1).clamp_min(1.0)
    p0 = ((masks * y).sum(1) / tot).clamp(1e-6, 1 - 1e-6)
    w = torch.zeros(n_b, d, dtype=torch.float64)
    b = torch.log(p0 / (1 - p0))
    active = torch.arange(n_b)
    eye = torch.eye(d + 1, dtype=torch.float64)
    eye[d, d] = 0.0
    xa1 = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        wa, ba, ma, la = w[active], b[active], masks[active], lam[active]
        logits = torch.einsum("nd,bd->bn", x, wa) + ba[:, None]
        p = torch.sigmoid(logits)
        r = ma * (p - y)
        g = torch.cat([r @ x + la[:, None] * wa, r.sum(1, keepdim=True)], 1)  # [b, d+1]
        scale = tot[active]
        done = g.abs().amax(1) / scale < tol
        if bool(done.all()):
            break
        s = ma * p * (1 - p)
        hess = torch.einsum("bn,ni,nj->bij", s, xa1, xa1) + la[:, None, None] * eye
        hess[:, d, d] += 1e-12 * scale
        step, info = torch.linalg.solve_ex(hess, g)
        if bool((info != 0).any()):  # singular (can only be the bias row): fall back to a gradient step
            bad = info != 0
            step[bad] = g[bad] / scale[bad][:, None]
        dw, db = step[:, :d], step[:, d]
        old = _objective(x, y, ma, wa, ba, la)
        t = torch.ones(len(active), dtype=torch.float64)
        for _ in range(40):  # per-problem backtracking: halve where the objective went up
            new = _objective(x, y, ma, wa - t[:, None] * dw, ba - t * db, la)
            worse = new > old + 1e-12 * old.abs()
            if not bool(worse.any()):
                break
            t = torch.where(worse, t * 0.5, t)
        w[active] = wa - t[:, None] * dw
        b[active] = ba - t * db
        stalled = (t * (dw.abs().amax(1) + db.abs())) < 1e-14 * (1 + wa.abs().amax(1))
        active = active[~(done | stalled)]
        if active.numel() == 0:
            break
    return w, b, it


def auc(scores: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``scores [B, m]`` against labels ``y [m]`` (ties count one half);
    NaN where ``y`` holds one class."""
    from scipy.stats import rankdata

    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    yb = np.asarray(y).astype(bool)
    n_pos, n_neg = int(yb.sum()), int((~yb).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(s.shape[0], np.nan)
    ranks = rankdata(s, axis=1)
    return (ranks[:, yb].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass
class ProbeFit:
    """A fitted probe: raw-feature weights, intercept, chosen C, its validation AUC, test scores."""

    w: torch.Tensor  # [d] float64, in the units of the features given
    b: float
    c: float
    val_auc: float | None  # mean validation AUC of the chosen C (None: no CV, default C = 1)
    test_logits: torch.Tensor | None = None
    test_auc: float | None = None
    test_accuracy: float | None = None


def _span(x_train: torch.Tensor) -> torch.Tensor | None:
    """Orthonormal basis ``V [d, r]`` of the row space of ``x_train`` when r < d, else None."""
    n, d = x_train.shape
    if n >= d:
        return None
    _, s, vh = torch.linalg.svd(x_train, full_matrices=False)
    r = int((s > s.max() * 1e-12).sum()) if s.numel() else 0
    return vh[: max(r, 1)].T.contiguous()


def fit_cv(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    cs: tuple[float, ...] = DEFAULT_CS,
    seed: int = 42,
    max_iter: int = 100,
) -> ProbeFit:
    """sae-probes' ``find_best_reg`` (L2): C by validation AUC over :func:`cv_splits`, refit on
    all of train, test AUC and accuracy (see module doc). The first C of the grid wins ties, as
    ``np.argmax`` does there. With ≤ 3 training examples there is no CV: C = 1."""
    xtr = x_train.double()
    ytr = y_train.double()
    basis = _span(xtr)
    ftr = xtr @ basis if basis is not None else xtr
    n = ftr.shape[0]
    splits = cv_splits(ytr.numpy().astype(int), seed)
    best_c, val_auc = 1.0, None
    if n > 3 and splits:
        masks, lams = [], []
        for c in cs:
            for tr, _ in splits:
                m = torch.zeros(n, dtype=torch.float64)
                m[torch.as_tensor(tr)] = 1.0
                masks.append(m)
                lams.append(1.0 / c)
        w, b, _ = fit_logistic(ftr, ytr, torch.stack(masks), torch.tensor(lams), max_iter)
        scores = np.zeros(len(cs))
        for j in range(len(cs)):
            vals = []
            for s_i, (_, va) in enumerate(splits):
                k = j * len(splits) + s_i
                logits = ftr[torch.as_tensor(va)] @ w[k] + b[k]
                vals.append(float(auc(logits[None], ytr[torch.as_tensor(va)].numpy())[0]))
            scores[j] = float(np.mean(vals))
        j = int(np.argmax(scores))
        best_c, val_auc = float(cs[j]), float(scores[j])
    elif n > 3:  # no split with both classes in validation: sae-probes scores every C 0.5 -> first C
        best_c = float(cs[0])
    w, b, _ = fit_logistic(ftr, ytr, torch.ones(1, n, dtype=torch.float64), torch.tensor([1.0 / best_c]), max_iter)
    w_raw = (basis @ w[0]) if basis is not None else w[0]
    fit = ProbeFit(w_raw, float(b[0]), best_c, val_auc)
    if x_test is not None and y_test is not None:
        logits = x_test.double() @ w_raw + fit.b
        fit.test_logits = logits
        a = float(auc(logits[None], y_test.numpy())[0])
        fit.test_auc = None if math.isnan(a) else a
        fit.test_accuracy = float(((logits > 0).double() == y_test.double()).double().mean())
    return fit
