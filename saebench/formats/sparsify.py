"""EleutherAI sparsify: one hookpoint folder (``cfg.json`` + ``sae.safetensors`` with
``encoder.weight``); TopK only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saebench.errors import SaebenchError
from saebench.formats.common import (
    SPARSIFY_KEYS,
    Converted,
    assemble,
    check_header,
    expect_format,
    hf_hookpoint_to_hook,
    int_field,
    read_config,
)
from saebench.io import read_json_object
from saebench.sae import check_load_memory, read_safetensors, safetensors_shapes


def load_sparsify(path: str | Path) -> Converted:
    """One sparsify hookpoint folder (``cfg.json`` + ``sae.safetensors``)."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if p.is_dir() and not (p / "cfg.json").is_file():
        hooks = sorted(c.name for c in p.iterdir() if (c / "cfg.json").is_file() and (c / "sae.safetensors").is_file())
        if hooks:
            raise SaebenchError(
                f"{p} holds one sparsify SAE per hookpoint ({', '.join(hooks[:6])}); pass one folder, e.g. "
                f"sparsify:{p / hooks[0]}"
            )
    expect_format(p, "sparsify")
    raw = read_config(p / "cfg.json")
    where = str(p)
    weights = p / "sae.safetensors"
    header = safetensors_shapes(weights)
    n_lat = int_field(raw.get("num_latents"), "num_latents", where) or None  # 0: expansion_factor x d_in
    check_header(weights, header, {"encoder.weight": (n_lat, None), "W_dec": (n_lat, None), "encoder.bias": (n_lat,)})
    check_load_memory(weights)
    t = read_safetensors(weights)
    model_name = None
    parent_cfg = p.parent / "config.json"
    if parent_cfg.is_file():
        try:
            model_name = read_json_object(parent_cfg).get("model")
        except SaebenchError:
            model_name = None
    conv = from_sparsify_parts(raw, t, where, hookpoint=p.name, model_name=model_name)
    conv.name = f"{p.parent.name}-{p.name}" if p.parent.name else p.name
    return conv


def from_sparsify_parts(
    raw: dict[str, Any],
    t: dict[str, torch.Tensor],
    where: str,
    hookpoint: str | None = None,
    model_name: str | None = None,
) -> Converted:
    """A sparsify config dict (``SaeConfig`` fields) and state dict as the native TopK module: the
    files of one hookpoint folder, or a live ``sparsify.Sae`` (``hookpoint`` None: no hook known)."""
    if raw.get("transcode"):
        raise SaebenchError(
            f"{where} is a sparsify transcoder (predicts a module's output), not an SAE; saebench evaluates SAEs"
        )
    if raw.get("skip_connection") or "W_skip" in t:
        raise SaebenchError(
            f"{where}: sparsify skip connections (W_skip) are not supported; wrap it with --sae python:FILE.py:FACTORY"
        )
    act = raw.get("activation", "topk")
    if act != "topk" or raw.get("signed"):
        raise SaebenchError(
            f"{where}: sparsify activation {act!r}{' (signed)' if raw.get('signed') else ''} is not supported, only "
            "topk"
        )
    missing = sorted(SPARSIFY_KEYS - set(t))
    if missing:
        raise SaebenchError(
            f"{where}: sae.safetensors lacks {', '.join(missing)}; not a complete sparsify SAE (saved without decoder?)"
        )
    k = int_field(raw.get("k"), "k", where)
    if not k:
        raise SaebenchError(f"{where}: sparsify cfg.json has no 'k'; add the number of active latents")
    notes = ["EleutherAI sparsify TopK (ReLU, then top-k)"]
    hook = hf_hookpoint_to_hook(hookpoint) if hookpoint else None
    if hook:
        notes.append(f"hookpoint {hookpoint!r} (a Hugging Face module output) mapped to {hook}")
    else:
        notes.append(f"hookpoint {hookpoint or 'unknown'!r} has no automatic transformer-lens name: pass --hook")
    tensors = {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    sae = assemble(
        "topk",
        tensors,
        where,
        k=int(k),
        hook_name=hook,
        model_name=model_name,
        source_format="sparsify",
        source_hookpoint=hookpoint,
    )
    return Converted(sae, "sparsify", "topk", notes)
