"""A small, seeded TopK SAE trainer: how the shipped reference SAE was made.

Not a competitor to dedicated trainers; it exists so the default ``saebench run`` has a real SAE
to measure and so anyone can regenerate that SAE bit-for-bit on the same machine type.
It follows Gao et al. (2024), "Scaling and evaluating sparse autoencoders":

- activations from the ``train`` split of the offline corpus at the hook, BOS excluded, scaled
  by a constant so that E‖x‖ = sqrt(d_in) (recorded as ``act_scale`` in cfg.json);
- ``b_dec`` initialised to the mean activation, ``W_enc = W_decᵀ`` with unit-norm decoder rows;
- loss = normalised MSE + (1/32) · AuxK loss (the top ``k_aux = d_in/2`` dead latents
  reconstruct the residual error; a latent is dead after ``dead_tokens`` tokens without firing);
- Adam, lr = 2e-4 / sqrt(d_sae / 16384), decoder rows renormalised after every step and their
  gradient's parallel component removed.
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


def collect_train_acts(model: SubjectModel, hook: str, n_tokens: int, ctx_len: int, seed: int,
                       batch_size: int = 8, progress: bool = True) -> torch.Tensor:
    """Hook activations ``[n, d]`` (BOS positions dropped) from the corpus' train split."""
    tokens = build_token_set(model.tokenize, model.bos_id, n_tokens, ctx_len, seed, split="train")
    pipe = ActivationPipeline(model, tokens, hook, batch_size, progress=progress)
    states = pipe.states()
    chunks = [pipe.acts_batch(states[s:s + batch_size])[:, 1:].reshape(-1, pipe.hook_width()).cpu()
              for s in range(0, states.shape[0], batch_size)]
    return torch.cat(chunks).float()


def train_topk(acts: torch.Tensor, d_sae: int, k: int, *, hook: str, model_name: str, seed: int = 0,
               epochs: int = 3, batch_tokens: int = 2048, dead_tokens: int = 200_000,
               aux_coef: float = 1 / 32, progress: bool = True) -> tuple[NativeSAE, dict[str, Any]]:
    """Train a TopK SAE on ``acts`` (model units) and return it with a training log."""
    gen = torch.Generator().manual_seed(seed)
    d_in = acts.shape[1]
    scale = math.sqrt(d_in) / float(acts.norm(dim=1).mean())
    x_all = acts * scale
    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, hook_name=hook, model_name=model_name,
                    act_scale=scale, normalize_activations="constant scale so that E||x|| = sqrt(d_in)",
                    trained_by="saebench.train.train_topk", train_seed=seed, train_tokens=int(acts.shape[0]),
                    train_epochs=epochs)
    sae = NativeSAE(cfg)
    with torch.no_grad():
        w = torch.randn(d_sae, d_in, generator=gen)
        w /= w.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_dec.copy_(x_all.mean(0))
    lr = 2e-4 / math.sqrt(d_sae / 16384)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    k_aux = d_in // 2
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    n = x_all.shape[0]
    steps_per_epoch = n // batch_tokens
    total = steps_per_epoch * epochs
    warmup = max(1, total // 20)
    log: dict[str, Any] = {"lr": lr, "steps": total, "batch_tokens": batch_tokens, "k_aux": k_aux}
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=f"train topk d_sae={d_sae} k={k}", disable=not progress, leave=False)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            x = x_all[order[b * batch_tokens:(b + 1) * batch_tokens]]
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup) * min(1.0, 5 * (total - step) / total)
            pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
            z = topk_relu(pre, k)
            xhat = z @ sae.W_dec + sae.b_dec
            err = x - xhat
            var = (x - x.mean(0)).pow(2).sum()
            mse = err.pow(2).sum() / var
            fired = (z > 0).any(0)
            since_fired += batch_tokens
            since_fired[fired] = 0
            dead = since_fired > dead_tokens
            aux = torch.zeros(())
            if bool(dead.any()):
                kk = min(k_aux, int(dead.sum()))
                z_aux = topk_relu(pre.masked_fill(~dead, -float("inf")).nan_to_num(neginf=-1e9), kk)
                aux = (z_aux @ sae.W_dec - err.detach()).pow(2).sum() / var
            loss = mse + aux_coef * aux
            opt.zero_grad()
            loss.backward()
            with torch.no_grad():
                g = sae.W_dec.grad
                g -= (g * sae.W_dec).sum(1, keepdim=True) * sae.W_dec
            opt.step()
            with torch.no_grad():
                sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
            step += 1
            bar.update(1)
            if step % 50 == 0 or step == total:
                bar.set_postfix(fvu=f"{mse.item():.3f}", dead=int(dead.sum()))
    bar.close()
    log.update({"final_train_fvu": mse.item(), "final_dead": int(dead.sum()), "train_s": time.perf_counter() - t0})
    return sae.eval(), log


def train_reference(model: SubjectModel, out: Path, hook: str = "blocks.6.hook_resid_post", d_sae: int = 2304,
                    k: int = 32, n_tokens: int = 393_216, ctx_len: int = 128, seed: int = 0, epochs: int = 3,
                    progress: bool = True) -> dict[str, Any]:
    """Collect activations and train the reference TopK SAE; saved as fp16 safetensors at ``out``."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    acts = collect_train_acts(model, hook, n_tokens, ctx_len, seed, progress=progress)
    t_acts = time.perf_counter() - t0
    sae, log = train_topk(acts, d_sae, k, hook=hook, model_name=model.name, seed=seed, epochs=epochs,
                          progress=progress)
    save_native(sae, out, dtype=torch.float16)
    return {**log, "acts_s": t_acts, "n_train_tokens": int(acts.shape[0]), "out": str(out)}
