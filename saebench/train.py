"""A small, seeded SAE trainer for the reference SAE and the reference zoo.

Not a competitor to dedicated trainers: it exists so that every leaderboard has documented,
reproducible reference points on the embedded model. Common to all architectures:

- activations from the ``train`` split of the offline corpus at the hook (BOS excluded), scaled by
  a constant so that E‖x‖ = sqrt(d_in) (recorded as ``act_scale`` in cfg.json: the SAE is used in
  model units);
- ``b_dec`` initialised to the mean activation, ``W_enc = W_decᵀ`` with random unit-norm decoder rows;
- Adam, lr = 2e-4 / sqrt(d_sae / 2^14) (Gao et al.'s scaling), 5% linear warm-up, linear decay over
  the last 20%; reconstruction loss normalised by the batch's total variance; the same tokens and
  epochs for every architecture.

TopK and BatchTopK (batch 2048 tokens; the shipped reference SAE is the TopK recipe):

- ``topk`` (Gao et al. 2024): z = TopK(ReLU(pre)); + (1/32)·AuxK, where the top d_in/2 dead latents
  (no firing for ``dead_tokens`` tokens) reconstruct the residual error; unit-norm decoder.
- ``batchtopk`` (Bussmann et al. 2024): the top k·B pre-activations over the whole batch; + AuxK;
  at inference a global threshold = EMA of the smallest selected activation per batch.
- Matryoshka BatchTopK (Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning Multi-Level Features
  with Matryoshka SAEs"): ``batchtopk`` with ``matryoshka_widths`` m_1 < ... < m_n (= d_sae): the
  BatchTopK selection over the whole dictionary, then the sum over prefixes of the normalised
  reconstruction loss of b_dec + z[:, :m_i] W_dec[:m_i] (the paper's and SAELens' unweighted sum;
  the full width is always one of the terms) + AuxK on the full-width residual (SAELens' default).
  Saved as ``batchtopk`` with ``matryoshka_widths`` in cfg.json (docs/matryoshka.md).

The penalised architectures (relu, jumprelu, gated) follow :class:`PenaltyRecipe` (checked against
the literature's gaps to TopK at matched L0 in docs/zoo.md): batches of 512 tokens (4x the steps
for the same tokens: a penalised SAE needs more updates than TopK to settle), the sparsity
coefficient λ ramped linearly from 0 over the first 5% of the steps (Anthropic's April 2024
update), then steered towards the target L0 to the end (log λ += 0.01·clip(log(L0_ema / target),
-1, 1) per step on an EMA of L0: matched L0 without a grid search; the final λ is in cfg.json),
gradient norm clipped at 1.

- ``relu`` (Anthropic, "Circuits Updates", April 2024): loss + λ·Σ_i z_i‖W_dec,i‖, decoder rows
  initialised with norm 0.1 and free during training; saved with the norms folded into the encoder
  (unit-norm decoder, the same function).
- ``jumprelu`` (Rajamanoharan et al. 2024b): z = pre·H(pre - θ), loss + λ·L0 with straight-through
  estimators (rectangle kernel of bandwidth ε = 0.001 in units where E‖x‖² = 1, as in the paper,
  i.e. 0.001·sqrt(E‖x‖²) in ours) for the gradient with respect to θ; θ_i starts at the quantile of
  latent i's initial pre-activation that fires at rate target/d_sae (our short schedule cannot walk
  every threshold up from ε); unit-norm decoder.
- ``gated`` (Rajamanoharan et al. 2024a): loss + λ·‖ReLU(π_gate)‖₁ + the auxiliary reconstruction of
  ReLU(π_gate) through a frozen decoder; unit-norm decoder.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saebench.data import build_token_set
from saebench.errors import SaebenchError
from saebench.models import SubjectModel
from saebench.pipeline import ActivationPipeline
from saebench.sae import NativeSAE, SAEConfig, check_prefix_widths, save_native, topk_relu

DEFAULT_HOOK = "blocks.6.hook_resid_post"


def collect_train_acts(
    model: SubjectModel, hook: str, n_tokens: int, ctx_len: int, seed: int, batch_size: int = 8, progress: bool = True
) -> torch.Tensor:
    """Hook activations ``[n, d]`` (BOS positions dropped) from the corpus' train split."""
    tokens = build_token_set(model.tokenize, model.bos_id, n_tokens, ctx_len, seed, split="train")
    pipe = ActivationPipeline(model, tokens, hook, batch_size, progress=progress)
    states = pipe.states()
    chunks = [
        pipe.acts_batch(states[s : s + batch_size])[:, 1:].reshape(-1, pipe.hook_width()).cpu()
        for s in range(0, states.shape[0], batch_size)
    ]
    return torch.cat(chunks).float()


def collect_transcoder_acts(
    model: SubjectModel,
    hook: str,
    hook_out: str,
    n_tokens: int,
    ctx_len: int,
    seed: int,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A transcoder's training pairs: input ``[n, d_in]`` at ``hook`` and target ``[n, d_out]`` at
    ``hook_out`` (downstream of it) at the same positions (BOS dropped), from the train split."""
    from saebench.transcoder import check_downstream

    check_downstream(hook, hook_out, model.n_layers, "being trained")
    tokens = build_token_set(model.tokenize, model.bos_id, n_tokens, ctx_len, seed, split="train")
    pipe = ActivationPipeline(model, tokens, hook, batch_size, progress=progress)
    states = pipe.states()
    xs, ys = [], []
    for s in range(0, states.shape[0], batch_size):
        x, y = model.hook_acts_pair(states[s : s + batch_size].to(model.device), pipe.site, hook_out)
        xs.append(x[:, 1:].reshape(-1, x.shape[-1]).cpu())
        ys.append(y[:, 1:].reshape(-1, y.shape[-1]).cpu())
    return torch.cat(xs).float(), torch.cat(ys).float()


class _JumpReLU(torch.autograd.Function):
    """pre·H(pre - θ); dθ uses the rectangle-kernel pseudo-derivative -(θ/ε)K((pre-θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        window = ((pre - theta).abs() < ctx.eps / 2).to(grad.dtype)
        d_theta = -(theta / ctx.eps) * window * grad
        return grad * (pre > theta), d_theta.reshape(-1, theta.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    """H(pre - θ); dθ uses -(1/ε)K((pre-θ)/ε); no gradient to pre (as in the paper)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        window = ((pre - theta).abs() < ctx.eps / 2).to(grad.dtype)
        return None, (-(1.0 / ctx.eps) * window * grad).reshape(-1, theta.shape[-1]).sum(0), None


def _init(cfg: SAEConfig, y_all: torch.Tensor, gen: torch.Generator, eps: float, relu_norm: float) -> NativeSAE:
    """Random unit-norm decoder rows, ``W_enc = W_decᵀ`` (a transcoder of another output width: its
    own random unit-norm encoder columns), ``b_dec`` = the mean of what is reconstructed (``y_all``)."""
    sae = NativeSAE(cfg)
    with torch.no_grad():
        w = torch.randn(cfg.d_sae, cfg.d_out or cfg.d_in, generator=gen)
        w /= w.norm(dim=1, keepdim=True)
        if cfg.architecture == "relu":
            w *= relu_norm
        sae.W_dec.copy_(w)
        if w.shape[1] == cfg.d_in:
            sae.W_enc.copy_(w.T)
        else:
            e = torch.randn(cfg.d_in, cfg.d_sae, generator=gen)
            sae.W_enc.copy_(e / e.norm(dim=0, keepdim=True))
        sae.b_dec.copy_(y_all.mean(0))
        if cfg.architecture == "jumprelu":
            sae.threshold.fill_(eps)
        if cfg.architecture == "batchtopk":
            sae.threshold.fill_(0.0)
    return sae


def _theta_at_rate(sae: NativeSAE, x_all: torch.Tensor, rate: float, gen: torch.Generator, floor: float) -> None:
    """JumpReLU thresholds at init: each latent's (1 - rate) quantile of its pre-activation on a
    sample of 8,192 training tokens (at least ``floor``), so the SAE starts at the target L0 and the
    short schedule spends its steps on reconstruction, not on walking thresholds up from ε."""
    with torch.no_grad():
        x = x_all[torch.randperm(x_all.shape[0], generator=gen)[:8192]]
        pre = (x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x) @ sae.W_enc + sae.b_enc
        kth = max(1, min(pre.shape[0], round((1 - rate) * pre.shape[0])))
        sae.threshold.copy_(pre.kthvalue(kth, dim=0).values.clamp_min(floor))


def _aux_k(
    pre: torch.Tensor, dead: torch.Tensor, err: torch.Tensor, W_dec: torch.Tensor, k_aux: int, var: torch.Tensor
) -> torch.Tensor:
    """Gao et al.'s AuxK: the top dead latents reconstruct the (detached) residual error."""
    if not bool(dead.any()):
        return torch.zeros(())
    kk = min(k_aux, int(dead.sum()))
    z_aux = topk_relu(pre.masked_fill(~dead, -1e9), kk)
    return (z_aux @ W_dec - err.detach()).pow(2).sum() / var


@dataclass(frozen=True)
class PenaltyRecipe:
    """Training settings of the penalised architectures (relu, jumprelu, gated); see the module doc.

    Defaults are the recipe the zoo uses (checked in docs/zoo.md against the literature's gaps to
    TopK at matched L0). ``lr_scale`` multiplies Gao et al.'s lr; ``jumprelu_bandwidth`` is the STE
    kernel width ε in units where E‖x‖² = 1 (Rajamanoharan et al.'s 0.001), converted to ours."""

    batch_tokens: int = 512
    lr_scale: float = 1.0
    sparsity_warmup: float = 0.05  # λ ramps linearly from 0 over this fraction of the steps
    steer_gain: float = 0.01  # log λ += gain · clip(log(L0_ema / target), -1, 1) per step ...
    steer_until: float = 1.0  # ... from the end of the warm-up until this fraction of the steps, then frozen
    l0_ema: float = 0.9  # smoothing of the L0 the controller reads
    grad_clip: float | None = 1.0
    relu_dec_norm: float = 0.1  # ReLU: initial decoder row norm (free afterwards; Anthropic's init)
    jumprelu_bandwidth: float = 0.001
    jumprelu_theta_lr_scale: float = 1.0
    jumprelu_theta_init: str = "quantile"  # "quantile": each θ_i fires at target/d_sae at init; "eps": θ = ε
    lam0: float | None = None  # initial λ (None: a per-architecture default)
    jumprelu_signed_lambda: float | None = None  # JumpReLU: additive λ steps of this size (λ may turn negative)


def train_sae(
    acts: torch.Tensor,
    architecture: str,
    d_sae: int,
    *,
    k: int = 32,
    hook: str,
    model_name: str,
    seed: int = 0,
    epochs: int = 3,
    batch_tokens: int = 2048,
    dead_tokens: int = 200_000,
    aux_coef: float = 1 / 32,
    progress: bool = True,
    recipe: PenaltyRecipe | None = None,
    lr: float | None = None,
    matryoshka_widths: list[int] | None = None,
    targets: torch.Tensor | None = None,
    hook_out: str | None = None,
) -> tuple[NativeSAE, dict[str, Any]]:
    """Train one SAE of ``architecture`` on ``acts`` (model units); ``k`` is TopK's k or the target L0.

    ``batch_tokens`` applies to TopK/BatchTopK; the penalised architectures take theirs (and every
    other setting) from ``recipe`` (default :class:`PenaltyRecipe`). ``lr`` replaces the base
    learning rate (default Gao et al.'s scaling, times ``recipe.lr_scale`` for the penalised
    architectures; the synthetic zoo's small problems take a larger one). ``matryoshka_widths``
    (BatchTopK only) trains a Matryoshka BatchTopK SAE on those nested prefixes (d_sae is added as
    the last prefix when missing).

    ``targets`` (with ``hook_out``) trains a transcoder: latents from ``acts`` (the input hook, not
    centred), reconstruction of ``targets`` ``[n, d_out]`` (the output hook at the same positions,
    :func:`collect_transcoder_acts`), both scaled by the input's ``act_scale`` so the transcoder is
    used in model units; every other setting as for an SAE (docs/transcoders.md)."""
    prefixes: list[int] | None = None
    if targets is not None and (hook_out is None or targets.shape[0] != acts.shape[0]):
        raise SaebenchError(
            f"a transcoder needs hook_out and one target row per input row; got hook_out={hook_out!r}, "
            f"{targets.shape[0]} targets for {acts.shape[0]} inputs"
        )
    if matryoshka_widths is not None:
        if architecture != "batchtopk":
            raise SaebenchError(
                f"matryoshka_widths trains a Matryoshka BatchTopK SAE; architecture is {architecture!r}"
            )
        try:
            prefixes = check_prefix_widths(list(matryoshka_widths), d_sae)
        except ValueError as exc:
            raise SaebenchError(str(exc)) from exc
        if prefixes[-1] != d_sae:
            prefixes.append(d_sae)
    gen = torch.Generator().manual_seed(seed)
    d_in = acts.shape[1]
    scale = math.sqrt(d_in) / float(acts.norm(dim=1).mean())
    x_all = acts * scale
    y_all = x_all if targets is None else targets * scale
    tc = {} if targets is None else {"d_out": int(targets.shape[1]), "hook_name_out": hook_out}
    penalised = architecture in ("relu", "jumprelu", "gated")
    rec = recipe or PenaltyRecipe()
    if penalised:
        batch_tokens = rec.batch_tokens
    cfg = SAEConfig(
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        k=k if architecture in ("topk", "batchtopk") else None,
        hook_name=hook,
        model_name=model_name,
        act_scale=scale,
        act_scale_rule="E||x|| = sqrt(d_in) on the training activations",
        trained_by="saebench.train.train_sae",
        train_seed=seed,
        train_tokens=int(acts.shape[0]),
        train_epochs=epochs,
        train_batch_tokens=batch_tokens,
        target_l0=k if penalised else None,
        matryoshka_widths=prefixes,
        **tc,
        **({"apply_b_dec_to_input": False} if tc else {}),
    )
    # ε in our units: Rajamanoharan et al. normalise to E‖x‖² = 1, we to E‖x‖ = sqrt(d_in)
    eps = rec.jumprelu_bandwidth * float(x_all.norm(dim=1).pow(2).mean().sqrt())
    sae = _init(cfg, y_all, gen, eps, rec.relu_dec_norm)
    if architecture == "jumprelu" and rec.jumprelu_theta_init == "quantile":
        _theta_at_rate(sae, x_all, k / d_sae, gen, eps)
    if lr is None:
        lr = 2e-4 / math.sqrt(d_sae / 16384) * (rec.lr_scale if penalised else 1.0)
    groups = [{"params": [p for n, p in sae.named_parameters() if n != "threshold"], "lr_scale": 1.0}]
    if architecture == "jumprelu":
        groups.append({"params": [sae.threshold], "lr_scale": rec.jumprelu_theta_lr_scale})
    opt = torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999))
    k_aux = (cfg.d_out or d_in) // 2
    lam = rec.lam0 if rec.lam0 is not None else {"relu": 0.02, "jumprelu": 0.002, "gated": 0.02}.get(architecture, 0.0)
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    n = x_all.shape[0]
    steps_per_epoch = n // batch_tokens
    total = steps_per_epoch * epochs
    warmup = max(1, total // 20)
    lam_warm = max(1, int(rec.sparsity_warmup * total))
    unit_norm = architecture != "relu"
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=f"train {architecture} d_sae={d_sae} k={k}", disable=not progress, leave=False)
    step = 0
    nmse = l0 = torch.zeros(())
    l0_ema = None
    dead = torch.zeros(d_sae, dtype=torch.bool)
    curve: list[dict[str, float]] = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            x = x_all[order[b * batch_tokens : (b + 1) * batch_tokens]]
            y = x if targets is None else y_all[order[b * batch_tokens : (b + 1) * batch_tokens]]
            for group in opt.param_groups:
                group["lr"] = (
                    group["lr_scale"] * lr * min(1.0, (step + 1) / warmup) * min(1.0, 5 * (total - step) / total)
                )
            lam_t = lam * min(1.0, (step + 1) / lam_warm) if penalised else 0.0
            var = (y - y.mean(0)).pow(2).sum()
            xin = x - sae.b_dec if targets is None else x  # a transcoder's input is not centred
            pre = xin @ sae.W_enc + sae.b_enc
            extra = torch.zeros(())
            if architecture == "topk":
                z = topk_relu(pre, k)
            elif architecture == "batchtopk":
                flat = torch.relu(pre).flatten()
                vals, idx = flat.topk(k * x.shape[0])
                z = torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre)
            elif architecture == "relu":
                z = torch.relu(pre)
                extra = lam_t * (z * sae.W_dec.norm(dim=1)).sum() / var
            elif architecture == "jumprelu":
                theta = sae.threshold.clamp_min(1e-6)
                z = _JumpReLU.apply(pre, theta, eps)
                extra = lam_t * _Step.apply(pre, theta, eps).sum() / x.shape[0]
            else:  # gated
                gate = xin @ sae.W_enc + sae.b_gate
                mag = torch.relu(xin @ (sae.W_enc * torch.exp(sae.r_mag)) + sae.b_mag)
                z = (gate > 0).to(mag.dtype) * mag
                gate_relu = torch.relu(gate)
                aux_rec = gate_relu @ sae.W_dec.detach() + sae.b_dec.detach()
                extra = lam_t * gate_relu.sum() / var + (y - aux_rec).pow(2).sum() / var
            if prefixes is None:
                xhat = z @ sae.W_dec + sae.b_dec
                prefix_loss = torch.zeros(())
            else:  # nested reconstructions, one block of latents added at a time; the last is the full SAE's
                xhat, prefix_loss, lo = sae.b_dec.expand_as(y), torch.zeros(()), 0
                for m in prefixes:
                    xhat = xhat + z[:, lo:m] @ sae.W_dec[lo:m]
                    if m != prefixes[-1]:
                        prefix_loss = prefix_loss + (y - xhat).pow(2).sum() / var
                    lo = m
            err = y - xhat
            nmse = err.pow(2).sum() / var
            fired = (z > 0).any(0)
            since_fired += x.shape[0]
            since_fired[fired] = 0
            dead = since_fired > dead_tokens
            if architecture in ("topk", "batchtopk"):
                extra = aux_coef * _aux_k(pre, dead, err, sae.W_dec, k_aux, var)
            loss = nmse + prefix_loss + extra
            opt.zero_grad()
            loss.backward()
            if unit_norm:
                with torch.no_grad():
                    g = sae.W_dec.grad
                    g -= (g * sae.W_dec).sum(1, keepdim=True) * sae.W_dec
            if penalised and rec.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), rec.grad_clip)
            opt.step()
            with torch.no_grad():
                if unit_norm:
                    sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
                l0 = (z > 0).sum(-1).float().mean()
                if penalised:
                    l0_ema = float(l0) if l0_ema is None else rec.l0_ema * l0_ema + (1 - rec.l0_ema) * float(l0)
                    if lam_warm <= step < int(rec.steer_until * total):
                        err = max(-1.0, min(1.0, math.log(max(l0_ema, 0.1) / k)))
                        if architecture == "jumprelu" and rec.jumprelu_signed_lambda is not None:
                            lam += rec.jumprelu_signed_lambda * err  # a multiplier for L0 = target, either sign
                        else:
                            lam *= math.exp(rec.steer_gain * err)
                if architecture == "batchtopk":
                    smallest = vals[vals > 0].min() if bool((vals > 0).any()) else torch.zeros(())
                    sae.threshold.copy_(smallest if step == 0 else 0.99 * sae.threshold + 0.01 * smallest)
            step += 1
            bar.update(1)
            if step % 50 == 0 or step == total:
                bar.set_postfix(fvu=f"{nmse.item():.3f}", l0=f"{float(l0):.1f}", dead=int(dead.sum()))
            if step % max(1, total // 20) == 0 or step == total:
                curve.append(
                    {"step": step, "fvu": round(nmse.item(), 4), "l0": round(float(l0), 2), "dead": int(dead.sum())}
                )
    bar.close()
    if architecture == "relu":  # fold the decoder norms into the encoder: same function, unit-norm decoder
        with torch.no_grad():
            norms = sae.W_dec.norm(dim=1).clamp_min(1e-12)
            sae.W_enc *= norms
            sae.b_enc *= norms
            sae.W_dec /= norms[:, None]
    sae.cfg.sparsity_coefficient = lam if penalised else None  # type: ignore[attr-defined]
    log = {
        "architecture": architecture,
        "d_sae": d_sae,
        "k": k,
        "lr": lr,
        "steps": total,
        "batch_tokens": batch_tokens,
        "final_train_fvu": nmse.item(),
        "final_train_l0": float(l0),
        "final_dead": int(dead.sum()),
        "sparsity_coefficient": lam if penalised else None,
        "recipe": asdict(rec) if penalised else None,
        "matryoshka_widths": prefixes,
        "curve": curve,
        "train_s": time.perf_counter() - t0,
    }
    return sae.eval(), log


def train_reference(
    model: SubjectModel,
    out: Path,
    hook: str = DEFAULT_HOOK,
    d_sae: int = 2304,
    k: int = 32,
    n_tokens: int = 393_216,
    ctx_len: int = 128,
    seed: int = 0,
    epochs: int = 3,
    progress: bool = True,
) -> dict[str, Any]:
    """Collect activations and train the reference TopK SAE; saved as fp16 safetensors at ``out``."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    acts = collect_train_acts(model, hook, n_tokens, ctx_len, seed, progress=progress)
    t_acts = time.perf_counter() - t0
    sae, log = train_sae(
        acts, "topk", d_sae, k=k, hook=hook, model_name=model.name, seed=seed, epochs=epochs, progress=progress
    )
    save_native(sae, out, dtype=torch.float16)
    return {**log, "acts_s": t_acts, "n_train_tokens": int(acts.shape[0]), "out": str(out)}
