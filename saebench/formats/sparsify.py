"""EleutherAI sparsify: one hookpoint folder (``cfg.json`` + ``sae.safetensors`` with
``encoder.weight``); TopK SAEs and transcoders, with or without a skip connection."""

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
    hf_transcoder_hooks,
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
    d_in = int_field(raw.get("d_in"), "d_in", where)
    n_lat = int_field(raw.get("num_latents"), "num_latents", where) or None  # 0: expansion_factor x d_in
    if n_lat is None and d_in is not None:
        n_lat = (int_field(raw.get("expansion_factor"), "expansion_factor", where) or 0) * d_in or None
    # sparsify builds every coder (transcoders too) with one width d_in: W_dec [n, d_in], W_skip [d_in, d_in]
    check_header(
        weights,
        header,
        {"encoder.weight": (n_lat, d_in), "encoder.bias": (n_lat,), "W_dec": (n_lat, d_in), "b_dec": (d_in,),
         "W_skip": (d_in, d_in)},
    )  # fmt: skip
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
    files of one hookpoint folder, or a live ``sparsify.Sae`` (``hookpoint`` None: no hook known).

    Transcoders (``transcode: true``) read the hookpoint module's input and predict its output: no
    ``x - b_dec`` centring (sparsify's ``encode`` skips it for them), hooks from
    :func:`hf_transcoder_hooks`. A skip connection ``W_skip [d_in, d_in]`` (sparsify's
    ``skip_connection``; output ``decode(z) + x W_skip^T``) is kept as the native skip term; on an
    SAE (not a transcoder) its ``b_dec`` centring is folded into ``b_enc`` exactly
    (``(x - b_dec) W_enc + b_enc = x W_enc + (b_enc - b_dec W_enc)``), since a skip term makes it a
    transcoder of its own hook, and transcoders do not centre."""
    transcode = bool(raw.get("transcode"))
    skip = bool(raw.get("skip_connection")) or "W_skip" in t
    if skip and "W_skip" not in t:
        raise SaebenchError(f"{where}: cfg.json sets skip_connection but sae.safetensors lacks W_skip; re-save it")
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
    tensors = {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    extra: dict[str, Any] = {}
    hook_out = None
    if transcode:
        hooks = hf_transcoder_hooks(hookpoint) if hookpoint else None
        if hooks is None:
            raise SaebenchError(
                f"{where}: a sparsify transcoder at hookpoint {hookpoint or 'unknown'!r} has no automatic "
                "transformer-lens input and output hooks (layers.N.mlp and layers.N have); wrap it with "
                "--sae python:FILE.py:FACTORY and set hook_name and hook_name_out"
            )
        hook, hook_out = hooks
        notes.append(
            f"transcoder at {hookpoint!r} (the module's input -> its output): reads {hook}, predicts {hook_out}"
        )
        if hook.endswith("ln2.hook_normalized"):
            extra["input_norm_affine"] = hook.removesuffix(".hook_normalized")
            notes.append(
                f"{hook} is before ln2's learned scale (and bias), sparsify trained on the MLP's input after them: "
                f"marked input_norm_affine={extra['input_norm_affine']}; saebench.formats.fold_input_affine(sae, "
                "ln2.w, ln2.b) makes it exact (without it: exact only where that scale is 1)"
            )
    else:
        hook = hf_hookpoint_to_hook(hookpoint) if hookpoint else None
        if hook:
            notes.append(f"hookpoint {hookpoint!r} (a Hugging Face module output) mapped to {hook}")
        else:
            notes.append(f"hookpoint {hookpoint or 'unknown'!r} has no automatic transformer-lens name: pass --hook")
    if skip:
        tensors["W_skip"] = t["W_skip"]  # [d_out, d_in], as ours; its shape is checked by assemble
        extra.update(d_out=int(t["W_dec"].shape[-1]), skip_connection=True)
        notes.append("skip connection W_skip kept: output = decode(encode(x)) + x W_skip^T")
    if transcode:
        extra.setdefault("d_out", int(t["W_dec"].shape[-1]))
    sae = assemble(
        "topk",
        tensors,
        where,
        k=int(k),
        hook_name=hook,
        model_name=model_name,
        apply_b_dec_to_input=not (transcode or skip),
        source_format="sparsify",
        source_hookpoint=hookpoint,
        **({"hook_name_out": hook_out} if hook_out else {}),
        **extra,
    )
    if skip and not transcode:  # sparsify centres this one: fold x - b_dec into b_enc (shapes checked above)
        with torch.no_grad():
            sae.b_enc -= sae.b_dec @ sae.W_enc
        notes.append("input centring x - b_dec folded into b_enc (an SAE with a skip term is loaded as a transcoder)")
    return Converted(sae, "sparsify", "topk", notes)
