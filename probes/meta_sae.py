"""A BatchTopK meta-SAE fitted to an SAE's decoder rows (SAEBench's ``meta_structure``).

Bussmann et al. (2025, app. D.1) train a small SAE on the *decoder matrix* of a base SAE: if
decoder directions are sparse combinations of a few shared directions, a meta-SAE with a quarter
of the base width and 4 active latents per row reconstructs them well. SAEBench 0.6.0 does this
with SAELens's ``BatchTopKTrainingSAE`` and ``SAETrainer``; this module is the same model and
training written out, so that the same seed gives the same initialisation, the same batches and
the same updates:

- parameters (in SAELens's order ``b_dec, W_dec, W_enc, b_enc``): ``W_dec [m, d]`` Kaiming-uniform,
  each row rescaled to norm 0.1, ``W_enc = W_decᵀ``, zero biases;
- encode: ``h = ((x - b_dec) W_enc + b_enc) ⊙ ‖W_dec,j‖`` (``rescale_acts_by_decoder_norm``), then
  BatchTopK: ReLU and keep the ``k·B`` largest entries of the whole ``[B, m]`` batch;
- decode: ``(z ⊘ ‖W_dec,j‖) W_dec + b_dec``;
- loss: ``mean_b Σ_d (x̂ - x)²`` plus SAELens's TopK auxiliary loss on latents that have not fired
  for ``dead_feature_window`` steps (none can be dead within SAEBench's 1500 steps at window 2000);
- each step: ``B`` rows drawn uniformly *with replacement* (``randint``), optionally under bf16
  autocast (SAEBench's default), gradient norm clipped to 1, Adam (β = 0.9, 0.999) at a constant
  learning rate.

The random stream is a ``torch.Generator`` seeded with ``seed``: Kaiming init first, then one
``randint`` per step, the order in which SAEBench consumes the global generator after
``torch.manual_seed(seed)``. Evaluation runs the trained model (BatchTopK, in chunks of
``eval_batch_size`` rows, no autocast) on every decoder row and returns per-row squared errors and
squared distances to the mean row, from which ``decoder_fraction_variance_explained`` is
``1 - Σ_r err_r / Σ_r var_r``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch


@dataclass
class MetaSAE:
    """The fitted meta-SAE's parameters (float32)."""

    b_dec: torch.Tensor
    W_dec: torch.Tensor
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    k: float

    def params(self) -> list[torch.Tensor]:
        return [self.b_dec, self.W_dec, self.W_enc, self.b_enc]

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations scaled by the decoder row norms."""
        return ((x - self.b_dec) @ self.W_enc + self.b_enc) * self.W_dec.norm(dim=-1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z * (1 / self.W_dec.norm(dim=-1))) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reconstruction, codes, pre-activations)`` of a batch (BatchTopK over the batch)."""
        h = self.pre(x)
        z = batch_topk(h, self.k)
        return self.decode(z), z, h


def meta_width(d_sae: int, width_ratio: float, k: int) -> int:
    """SAEBench's meta-SAE width: ``max(ceil(d_sae · width_ratio), k)``."""
    return max(math.ceil(d_sae * width_ratio), k)


def batch_topk(h: torch.Tensor, k: float) -> torch.Tensor:
    """ReLU, then keep the ``int(k · rows)`` largest entries of the whole batch, zero the rest."""
    acts = h.relu()
    flat = acts.flatten()
    top = torch.topk(flat, int(k * acts.shape[:-1].numel()), dim=-1)
    return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)


def init_meta_sae(d_in: int, width: int, k: float, gen: torch.Generator, init_norm: float = 0.1) -> MetaSAE:
    """SAELens's TopK training initialisation (see the module doc), drawing from ``gen``."""
    w_dec = torch.empty(width, d_in)
    torch.nn.init.kaiming_uniform_(w_dec, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True) * init_norm
    return MetaSAE(
        torch.zeros(d_in, requires_grad=True),
        w_dec.clone().requires_grad_(True),
        w_dec.T.clone().contiguous().requires_grad_(True),
        torch.zeros(width, requires_grad=True),
        k,
    )


def _aux_loss(meta: MetaSAE, x: torch.Tensor, out: torch.Tensor, h: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """SAELens's TopK auxiliary loss: the top ``d_in/2`` dead latents reconstruct the residual."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return out.new_tensor(0.0)
    k_aux = x.shape[-1] // 2
    scale = min(n_dead / k_aux, 1.0)
    k_aux = min(k_aux, n_dead)
    masked = torch.where(dead[None], h, -torch.inf)
    top = masked.topk(k_aux, sorted=False)
    acts = torch.zeros_like(h).scatter_(-1, top.indices, top.values)
    recons = (acts * (1 / meta.W_dec.norm(dim=-1))) @ meta.W_dec
    return scale * (recons - (x - out).detach()).pow(2).sum(dim=-1).mean()


def train_meta_sae(
    rows: torch.Tensor,
    width: int,
    k: float,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    autocast: bool = True,
    weight_decay: float = 0.0,
    dead_feature_window: int = 2000,
) -> MetaSAE:
    """Fit the meta-SAE to ``rows [n, d]`` (float32) for ``steps`` steps of ``batch_size`` rows."""
    rows = rows.detach().to(torch.float32).contiguous()
    gen = torch.Generator().manual_seed(int(seed))
    meta = init_meta_sae(rows.shape[1], width, k, gen)
    opt = torch.optim.Adam(meta.params(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    since_fired = torch.zeros(width)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    for _ in range(steps):
        x = rows[torch.randint(0, rows.shape[0], (batch_size,), generator=gen)]
        dead = since_fired > dead_feature_window
        with amp:
            out, z, h = meta.forward(x)
            loss = (out - x).pow(2).sum(dim=-1).mean() + _aux_loss(meta, x, out, h, dead)
            with torch.no_grad():
                since_fired += 1
                since_fired[z.bool().float().sum(-2).bool()] = 0
        loss.backward()
        torch.nn.utils.clip_grad_norm_(meta.params(), 1.0)
        opt.step()
        opt.zero_grad()
    for p in meta.params():
        p.requires_grad_(False)
    return meta


@torch.no_grad()
def row_errors(meta: MetaSAE, rows: torch.Tensor, eval_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(Σ_d (row - recon)², Σ_d (row - mean row)²)`` in float64; the reconstruction runs
    in chunks of ``eval_batch_size`` rows (BatchTopK competes within a chunk, as in SAEBench)."""
    rows = rows.detach().to(torch.float32)
    mean = rows.mean(dim=0, keepdim=True)
    err, var = [], []
    for s in range(0, rows.shape[0], eval_batch_size):
        batch = rows[s : s + eval_batch_size]
        recon = meta.forward(batch)[0]
        err.append(((batch - recon) ** 2).double().sum(-1))
        var.append(((batch - mean) ** 2).double().sum(-1))
    return torch.cat(err), torch.cat(var)
