"""A small, seeded SAE trainer for the reference SAE and the reference zoo.

Not a competitor to dedicated trainers: it exists so that every leaderboard has documented,
reproducible reference points on the embedded model. Common to all architectures:

- activations from the ``train`` split of the offline corpus at the hook (BOS excluded), scaled by
  a constant so that E‖x‖ = sqrt(d_in) (recorded as ``act_scale`` in cfg.json: the SAE is used in
  model units);
- ``b_dec`` initialised to the mean activation, ``W_enc = W_decᵀ`` with unit-norm decoder rows;
- Adam, lr = 2e-4 / sqrt(d_sae / 2^14) (Gao et al.'s scaling), 5% linear warm-up, linear decay over
  the last 20%; reconstruction loss normalised by the batch's total variance;
- for the penalised architectures (relu, jumprelu, gated) the sparsity coefficient λ is steered
  towards a target L0 during the first 90% of training (log λ += 0.02·clip(log(L0 / target), -1, 1)
  per step), then frozen — how the zoo gets matched L0 without a grid search. The final λ is in cfg.json.

Per architecture (paper next to it):

- ``topk`` (Gao et al. 2024): z = TopK(ReLU(pre)); + (1/32)·AuxK, where the top d_in/2 dead latents
  (no firing for ``dead_tokens`` tokens) reconstruct the residual error; unit-norm decoder.
- ``batchtopk`` (Bussmann et al. 2024): the top k·B pre-activations over the whole batch; + AuxK;
  at inference a global threshold = EMA of the smallest selected activation per batch.
- ``relu`` (Anthropic, "Circuits Updates", April 2024): loss + λ·Σ_i z_i‖W_dec,i‖; decoder norms free.
- ``jumprelu`` (Rajamanoharan et al. 2024b): z = pre·H(pre - θ), loss + λ·L0 with straight-through
  estimators (rectangle kernel, bandwidth ε = 1e-3) for the gradient with respect to θ; θ starts at
  ε and its learning rate is 10x the base (our schedule is short: see JUMPRELU_THRESHOLD_LR_SCALE).
- ``gated`` (Rajamanoharan et al. 2024a): loss + λ·‖ReLU(π_gate)‖₁ + the auxiliary reconstruction of
  ReLU(π_gate) through a frozen decoder; unit-norm decoder.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saebench.data import build_token_set
from saebench.models import SubjectModel
from saebench.pipeline import ActivationPipeline
from saebench.sae import NativeSAE, SAEConfig, save_native, topk_relu

JUMPRELU_EPS = 1e-3
# Adam moves a parameter by at most ~lr per step; JumpReLU thresholds start at ε and must travel
# O(1) (normalised units) within a few hundred steps, so they learn 10x faster than the weights.
JUMPRELU_THRESHOLD_LR_SCALE = 10.0
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


class _JumpReLU(torch.autograd.Function):
    """pre·H(pre - θ); dθ uses the rectangle-kernel pseudo-derivative -(θ/ε)K((pre-θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre, theta = ctx.saved_tensors
        window = ((pre - theta).abs() < JUMPRELU_EPS / 2).to(grad.dtype)
        d_theta = -(theta / JUMPRELU_EPS) * window * grad
        return grad * (pre > theta), d_theta.reshape(-1, theta.shape[-1]).sum(0)


class _Step(torch.autograd.Function):
    """H(pre - θ); dθ uses -(1/ε)K((pre-θ)/ε); no gradient to pre (as in the paper)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        pre, theta = ctx.saved_tensors
        window = ((pre - theta).abs() < JUMPRELU_EPS / 2).to(grad.dtype)
        return None, (-(1.0 / JUMPRELU_EPS) * window * grad).reshape(-1, theta.shape[-1]).sum(0)


def _init(cfg: SAEConfig, x_all: torch.Tensor, gen: torch.Generator) -> NativeSAE:
    sae = NativeSAE(cfg)
    with torch.no_grad():
        w = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
        w /= w.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_dec.copy_(x_all.mean(0))
        if cfg.architecture == "jumprelu":
            sae.threshold.fill_(JUMPRELU_EPS)
        if cfg.architecture == "batchtopk":
            sae.threshold.fill_(0.0)
    return sae


def _aux_k(
    pre: torch.Tensor, dead: torch.Tensor, err: torch.Tensor, W_dec: torch.Tensor, k_aux: int, var: torch.Tensor
) -> torch.Tensor:
    """Gao et al.'s AuxK: the top dead latents reconstruct the (detached) residual error."""
    if not bool(dead.any()):
        return torch.zeros(())
    kk = min(k_aux, int(dead.sum()))
    z_aux = topk_relu(pre.masked_fill(~dead, -1e9), kk)
    return (z_aux @ W_dec - err.detach()).pow(2).sum() / var


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
) -> tuple[NativeSAE, dict[str, Any]]:
    """Train one SAE of ``architecture`` on ``acts`` (model units); ``k`` is TopK's k or the target L0."""
    gen = torch.Generator().manual_seed(seed)
    d_in = acts.shape[1]
    scale = math.sqrt(d_in) / float(acts.norm(dim=1).mean())
    x_all = acts * scale
    penalised = architecture in ("relu", "jumprelu", "gated")
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
        target_l0=k if penalised else None,
    )
    sae = _init(cfg, x_all, gen)
    lr = 2e-4 / math.sqrt(d_sae / 16384)
    groups = [{"params": [p for n, p in sae.named_parameters() if n != "threshold"], "lr_scale": 1.0}]
    if architecture == "jumprelu":
        groups.append({"params": [sae.threshold], "lr_scale": JUMPRELU_THRESHOLD_LR_SCALE})
    opt = torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999))
    k_aux = d_in // 2
    lam = {"relu": 0.02, "jumprelu": 0.002, "gated": 0.02}.get(architecture, 0.0)
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    n = x_all.shape[0]
    steps_per_epoch = n // batch_tokens
    total = steps_per_epoch * epochs
    warmup = max(1, total // 20)
    unit_norm = architecture != "relu"
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=f"train {architecture} d_sae={d_sae} k={k}", disable=not progress, leave=False)
    step = 0
    nmse = l0 = torch.zeros(())
    dead = torch.zeros(d_sae, dtype=torch.bool)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            x = x_all[order[b * batch_tokens : (b + 1) * batch_tokens]]
            for group in opt.param_groups:
                group["lr"] = (
                    group["lr_scale"] * lr * min(1.0, (step + 1) / warmup) * min(1.0, 5 * (total - step) / total)
                )
            var = (x - x.mean(0)).pow(2).sum()
            xin = x - sae.b_dec
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
                extra = lam * (z * sae.W_dec.norm(dim=1)).sum() / var
            elif architecture == "jumprelu":
                theta = sae.threshold.clamp_min(1e-6)
                z = _JumpReLU.apply(pre, theta)
                extra = lam * _Step.apply(pre, theta).sum() / x.shape[0]
            else:  # gated
                gate = xin @ sae.W_enc + sae.b_gate
                mag = torch.relu(xin @ (sae.W_enc * torch.exp(sae.r_mag)) + sae.b_mag)
                z = (gate > 0).to(mag.dtype) * mag
                gate_relu = torch.relu(gate)
                aux_rec = gate_relu @ sae.W_dec.detach() + sae.b_dec.detach()
                extra = lam * gate_relu.sum() / var + (x - aux_rec).pow(2).sum() / var
            xhat = z @ sae.W_dec + sae.b_dec
            err = x - xhat
            nmse = err.pow(2).sum() / var
            fired = (z > 0).any(0)
            since_fired += x.shape[0]
            since_fired[fired] = 0
            dead = since_fired > dead_tokens
            if architecture in ("topk", "batchtopk"):
                extra = aux_coef * _aux_k(pre, dead, err, sae.W_dec, k_aux, var)
            loss = nmse + extra
            opt.zero_grad()
            loss.backward()
            if unit_norm:
                with torch.no_grad():
                    g = sae.W_dec.grad
                    g -= (g * sae.W_dec).sum(1, keepdim=True) * sae.W_dec
            opt.step()
            with torch.no_grad():
                if unit_norm:
                    sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
                l0 = (z > 0).sum(-1).float().mean()
                if penalised and warmup <= step < int(0.9 * total):
                    lam *= math.exp(0.02 * max(-1.0, min(1.0, math.log(max(float(l0), 0.1) / k))))
                if architecture == "batchtopk":
                    smallest = vals[vals > 0].min() if bool((vals > 0).any()) else torch.zeros(())
                    sae.threshold.copy_(smallest if step == 0 else 0.99 * sae.threshold + 0.01 * smallest)
            step += 1
            bar.update(1)
            if step % 50 == 0 or step == total:
                bar.set_postfix(fvu=f"{nmse.item():.3f}", l0=f"{float(l0):.1f}", dead=int(dead.sum()))
    bar.close()
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
