"""Feature absorption on first-letter identification: the math (Chanin et al. 2024, "A is for
Absorption: Studying Feature Splitting and Absorption in Sparse Autoencoders"; SAEBench's
``absorption`` eval, ``sae_bench/evals/absorption``, whose constants and rules are kept here).

Four steps, each a function below; ``saebench.evaluators.absorption`` builds the prompts, gets
the activations from the shared pipeline and calls them in order.

1. :func:`fit_letter_probes` — the ground truth: a one-vs-rest logistic probe per letter on the
   residual activation at the word token, class-balanced like SAEBench's
   ``BCEWithLogitsLoss(pos_weight = n_neg / n_pos)``:

       loss_c = mean_n [ pw_c · y_nc · softplus(-s_nc) + (1 - y_nc) · softplus(s_nc) ] + (l2/2)·‖w_c‖²,
       s_nc = w_c · x̃_n + b_c,   x̃ = (x - mean) / σ  (one scalar σ: the RMS per dimension)

   solved to convergence with L-BFGS in float64 (SAEBench: 50 Adam epochs) and mapped back to
   raw activation space (``W = w / σ``), so its directions are comparable with decoder rows.
2. :func:`l1_probe` + :func:`rank_latents` — each letter's candidate latents: an L1-regularised
   probe of the same balanced loss on the raw SAE latents, ``+ l1 · ‖w_c‖₁`` (SAEBench's
   ``k_sparse_probe_l1_decay = 0.01``), solved exactly by FISTA with adaptive restart on a
   sparse latent matrix (SAEBench: 50 Adam epochs); latents ranked by weight, latents with zero
   weight after them in lasso entry order (most negative loss gradient first).
3. :func:`k_sparse_f1` + :func:`split_features` — for k = 1..max_k a logistic probe on the top-k
   latents (sklearn ``LogisticRegression(max_iter=500, class_weight="balanced")``, as SAEBench),
   test F1 at score > 0; the letter's *main latents* are the top-k of the last k whose F1 beat
   the previous best by more than ``f1_jump`` (0.03): more than one main latent is feature
   splitting, and ``len(main)`` is SAEBench's ``num_split_features``.
4. :func:`absorption_scores` — for every test word the probe classifies correctly (score > 0 and
   the word starts with the letter), with ``p̂`` the unit probe direction, ``a`` the latents,
   ``c_i = a_i · (d_i · p̂)`` latent i's contribution to the reconstruction along ``p̂`` (``d_i``
   its decoder row in model units; SAEBench writes ``a_i · cos(d_i, p̂)``, the same for the
   unit-norm decoders it is run on), ``P = x · p̂``, ``M = Σ_{i∈main} c_i``, and ``A`` the sum of
   the (at most 3) largest positive ``c_i`` over non-main latents with ``cos(d_i, p̂) ≥ 0.1``:

       absorption_fraction = 0                          if P ≤ 0, M ≥ P or A / P < 0.4
                           = 1                          elif M ≤ 0
                           = min(A, P - M) / (min(A, P - M) + M)   otherwise (clipped to [0, 1])

   and *full absorption*: every main latent is off (< 1e-8), the latent with the largest ``c_i``
   has ``cos(d_i, p̂) ≥ 0.025`` and carries ``c_i / P ≥ 0.4`` (P > 0). A letter's scores are the
   means over its probe true positives; the eval's are the means over letters.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LETTERS = "abcdefghijklmnopqrstuvwxyz"

# SAEBench's constants (sae_bench/evals/absorption/feature_absorption.py, eval_config.py)
FULL_ABSORPTION_COS = 0.025  # the top projecting latent must be at least this aligned with the probe
FRACTION_COS = 0.1  # a potential absorber must be at least this aligned with the probe
PROJECTION_SHARE = 0.4  # absorbers must carry at least this share of the probe projection
MAX_ABSORBERS = 3  # at most this many latents together absorb a token
MAIN_OFF = 1e-8  # a main latent below this is "not firing"


# -- 1. the ground-truth probe ------------------------------------------------------------------


@dataclass
class LetterProbe:
    """One-vs-rest probes in raw activation space: ``score = x @ W.T + b``; ``trained[c]`` is False
    for a class without a positive training example (its score is -inf: it never fires)."""

    W: torch.Tensor  # [C, d] float64
    b: torch.Tensor  # [C] float64
    trained: torch.Tensor  # [C] bool

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        s = x.double() @ self.W.T + self.b
        return torch.where(self.trained, s, torch.full_like(s, -math.inf))

    def directions(self) -> torch.Tensor:
        """Unit probe directions ``[C, d]`` (zero rows for untrained classes)."""
        return F.normalize(self.W, dim=1)


def pos_weights(y1h: torch.Tensor) -> torch.Tensor:
    """SAEBench's ``pos_weight = n_neg / n_pos`` per class (inf where a class has no positive)."""
    n_pos = y1h.sum(0)
    return (y1h.shape[0] - n_pos) / n_pos


def balanced_bce(s: torch.Tensor, y1h: torch.Tensor, pw: torch.Tensor) -> torch.Tensor:
    """Per-class mean of ``pw · y · softplus(-s) + (1 - y) · softplus(s)`` (torch's BCEWithLogits
    with ``pos_weight``), ``[C]``."""
    return (pw * y1h * F.softplus(-s) + (1 - y1h) * F.softplus(s)).mean(0)


def fit_letter_probes(
    x: torch.Tensor, y: torch.Tensor, n_classes: int = 26, l2: float = 1e-3, max_iter: int = 500
) -> LetterProbe:
    """One-vs-rest balanced logistic probes (see module doc, step 1) for labels ``y [n]`` in
    ``0..n_classes-1`` on activations ``x [n, d]``; deterministic (L-BFGS from zero, float64)."""
    x = x.double()
    y1h = F.one_hot(y.long(), n_classes).double()
    trained = y1h.sum(0) > 0
    pw = torch.where(trained, pos_weights(y1h), torch.ones(n_classes, dtype=torch.float64))
    mu = x.mean(0)
    sigma = float((x - mu).pow(2).mean().sqrt().clamp_min(1e-12))
    xs = (x - mu) / sigma
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    live = trained.double()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (balanced_bce(xs @ w.T + b, y1h, pw) * live).sum() + 0.5 * l2 * (w * w * live[:, None]).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    W = w.detach() / sigma
    return LetterProbe(W, b.detach() - W @ mu, trained)


# -- 2. the L1 probe on latents and the latent ranking -------------------------------------------


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b  # dense, or sparse (COO / CSR) times dense


def _top_eigenvalue(a: torch.Tensor, at: torch.Tensor, iters: int = 60) -> float:
    """Largest eigenvalue of ``[A 1]ᵀ[A 1]`` by power iteration (A sparse or dense)."""
    n, m = a.shape
    v = torch.ones(m + 1, 1, dtype=torch.float64) / math.sqrt(m + 1)
    lam = 0.0
    for _ in range(iters):
        av = _mm(a, v[:m]) + v[m]
        u = torch.cat([_mm(at, av), av.sum(0, keepdim=True)])
        lam = float(u.norm())
        if lam == 0.0:
            return 1.0
        v = u / lam
    return lam


def l1_probe(
    z: torch.Tensor, y: torch.Tensor, n_classes: int = 26, l1: float = 0.01, max_iter: int = 1000, tol: float = 1e-9
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """L1-regularised one-vs-rest probes on latents ``z [n, m]`` (dense or sparse COO), see module
    doc step 2. Returns ``(W [C, m], grad [C, m], iterations)``: the weights and the loss gradient
    at the solution (for ranking latents with zero weight).

    FISTA (Beck & Teboulle 2009) with gradient-based adaptive restart (O'Donoghue & Candès 2015)
    on the exactly reparametrised problem ``w_j = v_j / s_j`` (``s_j`` = latent j's RMS on train):
    the same minimiser, with the L1 weight of coordinate j becoming ``l1 / s_j``, but columns of
    unit scale, so the step ``1/L_c``, ``L_c = max(pw_c, 1)/4 · λ_max([z̃ 1]ᵀ[z̃ 1]) / n``, is not
    throttled by the widest latent. Only latents that fire on train are optimised (the others have
    zero gradient and keep weight 0), so wide SAEs cost what their live latents cost. Stops after
    ``max_iter`` iterations or when no weight moves by more than ``tol`` (relative to the largest).
    """
    z = z.double().coalesce() if z.is_sparse else z.double()
    n, m = z.shape
    if z.is_sparse:
        sq = torch.zeros(m, dtype=torch.float64).index_add_(0, z.indices()[1], z.values() ** 2)
    else:
        sq = (z * z).sum(0)
    live = (sq > 0).nonzero().squeeze(1)  # latents that fire on train
    k = live.numel()
    if k == 0:  # no latent fires on train: every weight and gradient is 0
        return torch.zeros(n_classes, m, dtype=torch.float64), torch.zeros(n_classes, m, dtype=torch.float64), 0
    scale = (sq[live] / n).sqrt()
    if z.is_sparse:
        col = torch.full((m,), -1, dtype=torch.long)
        col[live] = torch.arange(k)
        ij = z.indices()
        keep = col[ij[1]] >= 0
        ij = torch.stack([ij[0][keep], col[ij[1][keep]]])
        zs = torch.sparse_coo_tensor(ij, z.values()[keep] / scale[ij[1]], (n, k), check_invariants=True)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR products are 3x faster here
            warnings.simplefilter("ignore", UserWarning)
            zs = zs.coalesce().to_sparse_csr()
            zt = zs.t().to_sparse_csr()
    else:
        zs = z[:, live] / scale
        zt = zs.t()
    y1h = F.one_hot(y.long(), n_classes).double()
    has_pos = y1h.sum(0) > 0
    pw = torch.where(has_pos, pos_weights(y1h), torch.ones(n_classes, dtype=torch.float64))
    lipschitz = torch.clamp(pw, min=1.0) / 4 * _top_eigenvalue(zs, zt) / n  # [C]
    step = (1.0 / lipschitz)[:, None]  # [C, 1]
    thresh = step * (l1 / scale)[None, :]  # per-coordinate prox threshold

    def grad(v: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = _mm(zs, v.T) + b  # [n, C]
        g = (-pw * y1h * torch.sigmoid(-s) + (1 - y1h) * torch.sigmoid(s)) / n
        return _mm(zt, g).T, g.sum(0)

    v = torch.zeros(n_classes, k, dtype=torch.float64)
    b = torch.zeros(n_classes, dtype=torch.float64)
    yv, yb, t = v.clone(), b.clone(), torch.ones(n_classes, 1, dtype=torch.float64)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        gv, gb = grad(yv, yb)
        nv = yv - step * gv
        nv = torch.sign(nv) * torch.clamp(nv.abs() - thresh, min=0.0)  # prox of the weighted L1
        nb = yb - step[:, 0] * gb
        dv, db = nv - v, nb - b
        restart = ((yv - nv) * dv).sum(1) + (yb - nb) * db > 0  # momentum points uphill: drop it
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        mom = torch.where(restart[:, None], torch.zeros_like(t), (t - 1) / t_next)
        t = torch.where(restart[:, None], torch.ones_like(t), t_next)
        yv, yb = nv + mom * dv, nb + mom[:, 0] * db
        v, b = nv, nb
        if float(dv.abs().max()) <= tol * max(1.0, float(v.abs().max())) and float(db.abs().max()) <= tol:
            break
    gv, _ = grad(v, b)
    w = torch.zeros(n_classes, m, dtype=torch.float64)
    g = torch.zeros(n_classes, m, dtype=torch.float64)
    w[:, live] = torch.where(has_pos[:, None], v / scale, torch.zeros_like(v))
    g[:, live] = gv * scale
    return w, g, it


def rank_latents(w: torch.Tensor, g: torch.Tensor, k: int) -> list[int]:
    """The ``k`` first latents for one class: positive weights (largest first), then zero weights
    in lasso entry order (most negative gradient first), then negative weights (largest first)."""
    pos = (w > 0).nonzero().squeeze(1)
    zero = (w == 0).nonzero().squeeze(1)
    neg = (w < 0).nonzero().squeeze(1)
    parts = [
        pos[w[pos].argsort(descending=True, stable=True)],
        zero[g[zero].argsort(stable=True)],
        neg[w[neg].argsort(descending=True, stable=True)],
    ]
    order = torch.cat(parts)
    return [int(i) for i in order[:k]]


# -- 3. k-sparse probes and feature splitting ------------------------------------------------------


def f1(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Binary F1 (0 where there is neither a predicted nor a true positive, as sklearn)."""
    tp = int((pred & truth).sum())
    den = int(pred.sum()) + int(truth.sum())
    return 2 * tp / den if den else 0.0


def columns(z: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """Dense float64 ``z[:, idx]`` of a dense or sparse COO latent matrix."""
    sel = torch.tensor(idx, dtype=torch.long)
    if z.is_sparse:
        return z.index_select(1, sel).to_dense().double()
    return z[:, sel].double()


def k_sparse_f1(
    z_train: torch.Tensor, t_train: torch.Tensor, z_test: torch.Tensor, t_test: torch.Tensor, ranked: list[int]
) -> tuple[list[float], list[list[int]]]:
    """Test F1 (score > 0) of SAEBench's k-sparse probe on the top-k ``ranked`` latents, k = 1..len;
    returns ``(f1 per k, latents per k)``. ``t_*`` are the binary targets."""
    from sklearn.linear_model import LogisticRegression

    ytr = t_train.numpy().astype(int)
    if ytr.min() == ytr.max():  # one class on train: nothing to fit
        return [], []
    out_f1, out_idx = [], []
    for k in range(1, len(ranked) + 1):
        idx = ranked[:k]
        clf = LogisticRegression(max_iter=500, class_weight="balanced").fit(columns(z_train, idx).numpy(), ytr)
        s = columns(z_test, idx).numpy() @ clf.coef_[0] + clf.intercept_[0]
        out_f1.append(f1(torch.from_numpy(s > 0), t_test.bool()))
        out_idx.append(list(idx))
    return out_f1, out_idx


def split_features(f1_by_k: list[float], latents_by_k: list[list[int]], jump: float = 0.03) -> list[int]:
    """SAEBench's rule: walk k = 1, 2, ...; while F1 beats the best so far by more than ``jump``,
    the top-k latents become the main latents; stop at the first k that does not."""
    best, main = -100.0, []
    for score, idx in zip(f1_by_k, latents_by_k, strict=True):
        if score > best + jump:
            best, main = score, idx
        else:
            break
    return main


# -- 4. absorption per token ------------------------------------------------------------------------


@dataclass
class TokenAbsorption:
    """Per-token absorption of one letter's probe true positives (all ``[t]``)."""

    fraction: torch.Tensor  # float64 absorption fraction
    full: torch.Tensor  # bool full absorption
    probe_proj: torch.Tensor  # P = x · p̂
    main_proj: torch.Tensor  # M
    absorber_proj: torch.Tensor  # A
    top_latent: torch.Tensor  # long: the latent with the largest contribution along p̂
    top_proj: torch.Tensor  # its contribution


def absorption_scores(
    x: torch.Tensor,
    z: torch.Tensor,
    direction: torch.Tensor,
    dec_proj: torch.Tensor,
    dec_cos: torch.Tensor,
    main: list[int],
    fraction_cos: float = FRACTION_COS,
    full_cos: float = FULL_ABSORPTION_COS,
    share: float = PROJECTION_SHARE,
    max_absorbers: int = MAX_ABSORBERS,
) -> TokenAbsorption:
    """Absorption fraction and full absorption (module doc, step 4) of tokens with activations
    ``x [t, d]`` and latents ``z [t, m]`` for one letter: ``direction`` its unit probe direction,
    ``dec_proj [m]`` = ``d_i · p̂`` and ``dec_cos [m]`` = ``cos(d_i, p̂)`` per latent, ``main`` its
    main latents."""
    x, z = x.double(), z.double()
    t, m = z.shape
    contrib = z * dec_proj.double()  # c_i per token
    P = x @ direction.double()
    main_t = torch.tensor(main, dtype=torch.long)
    is_main = torch.zeros(m, dtype=torch.bool)
    is_main[main_t] = True
    M = contrib[:, main_t].sum(1)
    cand = (~is_main & (dec_cos >= fraction_cos))[None, :] & (contrib > 0)
    masked = torch.where(cand, contrib, torch.zeros_like(contrib))
    A = masked.topk(min(max_absorbers, m), dim=1).values.sum(1)
    Ppos = P > 0
    safe_P = torch.where(Ppos, P, torch.ones_like(P))
    none = ~Ppos | (M >= P) | (A / safe_P < share)
    absorbed = torch.minimum(A, P - M)
    partial = (absorbed / (absorbed + M)).clamp(0.0, 1.0)
    fraction = torch.where(none, torch.zeros_like(P), torch.where(M <= 0, torch.ones_like(P), partial))
    top_proj, top_latent = contrib.max(1)
    main_off = (z[:, main_t] < MAIN_OFF).all(1) if main else torch.ones(t, dtype=torch.bool)
    full = main_off & (dec_cos[top_latent] >= full_cos) & Ppos & (top_proj / safe_P >= share)
    return TokenAbsorption(fraction, full, P, M, A, top_latent, top_proj)
