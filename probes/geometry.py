"""Decoder and encoder geometry of SAEs, chunked so no ``d_sae x d_sae`` matrix is ever built.

- :func:`decoder_directions` — each latent's decoder row in model units, from the SAE protocol
  alone: ``d_i = decode(e_i) - decode(0)`` (the change of the reconstruction when latent i goes
  from 0 to 1; exact for every SAE whose decode is affine, e.g. all native architectures, and it
  folds in any input scaling such as ``act_scale``). SAEs whose decode is not affine in the
  latents alone (``normalize_activations = layer_norm``: decode needs the last encode's
  statistics) fall back to their ``W_dec`` attribute (directions exact, norms in the SAE's
  normalised units), and the caller is told so.
- :func:`encoder_directions` — ``W_enc`` columns as rows (optional attribute; the encoder is
  nonlinear, so there is no protocol-only fallback).
- :func:`max_cos` — for each row of U, the largest cosine with any row of V (or with any *other*
  row of U), and where it is; computed ``[chunk, n]`` blocks at a time, with the chunk chosen so a
  block holds at most ``block_elements`` floats.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from saebench.errors import SaebenchError
from saebench.sae import output_width

BLOCK_ELEMENTS = 1 << 24  # 16M floats (64 MB float32) per similarity block


def _device(sae: Any) -> torch.device:
    params = getattr(sae, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _one_hot(rows: torch.Tensor, d_sae: int, device: torch.device) -> torch.Tensor:
    e = torch.zeros(rows.numel(), d_sae, device=device)
    e[torch.arange(rows.numel(), device=device), rows.to(device)] = 1.0
    return e


@torch.no_grad()
def decoder_directions(sae: Any, chunk: int = 1024) -> tuple[torch.Tensor, str]:
    """``[d_sae, d_in]`` (``d_out`` for a transcoder) float32 decoder rows in model units and how they
    were obtained: ``"decode"`` (one-hot decodes), ``"W_dec"`` scaled (a ``W_dec`` attribute that 16
    spread one-hot decodes confirm up to one common factor: the shortcut that keeps wide SAEs cheap) or ``"W_dec
    (normalised units)"`` (the fallback of the module doc)."""
    d_sae, d_in = int(sae.d_sae), output_width(sae)  # a transcoder's rows live at its output hook (d_out)
    dev = _device(sae)
    W = getattr(sae, "W_dec", None)
    if W is not None:
        W = W.detach().float()
        if tuple(W.shape) != (d_sae, d_in):
            raise SaebenchError(f"SAE W_dec has shape {list(W.shape)}, expected [{d_sae}, {d_in}]; fix its W_dec")
    try:
        base = sae.decode(torch.zeros(1, d_sae, device=dev)).float().reshape(1, -1)
        if W is not None:
            probe = torch.linspace(0, d_sae - 1, min(16, d_sae)).round().long().unique()
            got = sae.decode(_one_hot(probe, d_sae, dev)).float() - base
            ref = W[probe.to(W.device)].to(got.device)
            c = float((got * ref).sum() / (ref * ref).sum().clamp_min(1e-30))
            scale = float(got.abs().max()) + float(base.abs().max())  # decode(e) - decode(0) cancels base
            if torch.allclose(got, c * ref, rtol=1e-3, atol=1e-5 * max(scale, 1e-30)):
                return (c * W).cpu(), f"W_dec x {c:.6g}"
        rows = []
        for s in range(0, d_sae, chunk):
            idx = torch.arange(s, min(d_sae, s + chunk))
            rows.append((sae.decode(_one_hot(idx, d_sae, dev)).float() - base).cpu())
        return torch.cat(rows), "decode"
    except SaebenchError:
        if W is None:
            raise
        return W.cpu(), "W_dec (normalised units)"


def encoder_directions(sae: Any) -> torch.Tensor | None:
    """``[d_sae, d_in]`` float32 encoder directions (``W_enc`` transposed), or None without ``W_enc``."""
    W = getattr(sae, "W_enc", None)
    if W is None:
        return None
    W = W.detach().float().cpu()
    if W.shape != (int(sae.d_in), int(sae.d_sae)):
        raise SaebenchError(
            f"SAE W_enc has shape {list(W.shape)}, expected [{int(sae.d_in)}, {int(sae.d_sae)}]; fix its W_enc"
        )
    return W.T.contiguous()


def unit_rows(m: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (zero rows stay zero: their cosine with anything is 0)."""
    return F.normalize(m.float(), dim=1)


def max_cos(
    u: torch.Tensor, v: torch.Tensor | None = None, block_elements: int = BLOCK_ELEMENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row i of unit-row matrix ``u [m, d]``: the largest ``u_i · v_j`` over rows j of
    ``v [n, d]`` and its index j (``v`` None: over the *other* rows of ``u``, self excluded, as
    SAEBench's ``max_decoder_cosine_sim``). Blocks of ``[c, n]`` with ``c·n ≤ block_elements``,
    computed on ``u``'s device (``v`` is moved there); results on the CPU."""
    other = v.to(u.device) if v is not None else u
    n = other.shape[0]
    if n == 0 or (v is None and n < 2):
        raise SaebenchError("max_cos needs at least one row to compare with (two for self-similarity)")
    chunk = max(1, block_elements // n)
    best = torch.empty(u.shape[0], device=u.device)
    arg = torch.empty(u.shape[0], dtype=torch.long, device=u.device)
    for s in range(0, u.shape[0], chunk):
        block = u[s : s + chunk] @ other.T
        if v is None:
            rows = torch.arange(block.shape[0], device=u.device)
            block[rows, rows + s] = -float("inf")
        best[s : s + chunk], arg[s : s + chunk] = block.max(1)
    return best.cpu(), arg.cpu()


def row_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of each row of ``a`` with the same row of ``b`` (``[m]``)."""
    return (unit_rows(a) * unit_rows(b)).sum(1)
