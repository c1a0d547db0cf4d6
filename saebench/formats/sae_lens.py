"""SAELens folders (``cfg.json`` + ``sae_weights.safetensors``, 5.x and 6.x configs) and
``sae_lens:RELEASE/ID`` pretrained SAEs (through the sae-lens package; needs the hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saebench.errors import SaebenchError
from saebench.formats.common import (
    Converted,
    assemble,
    check_header,
    expect_format,
    int_field,
    jump_threshold,
    mlp_output_hook,
    read_config,
)
from saebench.sae import check_load_memory, read_safetensors, safetensors_shapes

SAE_LENS_ARCH = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated", "batchtopk": "batchtopk",
                 "matryoshka_batchtopk": "batchtopk"}  # fmt: skip
# SAELens' transcoders (sae_lens.saes.transcoder): architecture -> (our encoder, has a skip term W_skip)
SAE_LENS_TRANSCODERS = {
    "transcoder": ("relu", False),
    "skip_transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", False),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}


def transcoder_fields(
    arch: str, cfg: dict[str, Any], meta: dict[str, Any], hook_name: str | None, t: dict[str, torch.Tensor], where: str
) -> tuple[dict[str, Any], list[str]]:
    """The native config keys of a SAELens transcoder (``d_out``, ``hook_name_out``, ``skip_connection``,
    no input centring: SAELens' ``Transcoder.process_sae_in`` never subtracts ``b_dec``) and the notes.

    SAELens keeps the output hook in ``metadata.hook_name_out`` (its pretrained loaders set it; its
    ``TranscoderConfig`` has no field for it). When a file does not record it and the input hook is an
    MLP input (``blocks.L.ln2.hook_normalized``, ``blocks.L.hook_mlp_in``), the output is the MLP's,
    ``blocks.L.hook_mlp_out``; any other transcoder without an output hook is refused."""
    skip = SAE_LENS_TRANSCODERS[arch][1]
    if skip and "W_skip" not in t:
        raise SaebenchError(f"{where}: SAELens {arch} lacks tensor W_skip (its skip term); the file is incomplete")
    if not skip and "W_skip" in t:
        raise SaebenchError(
            f"{where}: holds a skip term W_skip but architecture {arch!r} has none; set architecture to "
            f"'{'jumprelu_' if arch.startswith('jumprelu') else ''}skip_transcoder' in cfg.json"
        )
    d_out = int(t["W_dec"].shape[-1])
    declared = int_field(cfg.get("d_out"), "d_out", where)
    if declared is not None and declared != d_out:
        raise SaebenchError(f"{where}: W_dec is {list(t['W_dec'].shape)} but cfg.json says d_out={declared}; fix d_out")
    if not hook_name:
        raise SaebenchError(
            f'{where}: SAELens {arch} records no input hook; add "hook_name" (e.g. blocks.L.ln2.hook_normalized) '
            'under "metadata" in cfg.json'
        )
    if meta.get("hook_head_index_out") is not None or cfg.get("hook_head_index_out") is not None:
        raise SaebenchError(
            f"{where}: a transcoder writing one attention head (hook_head_index_out) is not supported: saebench "
            "replaces a whole hook"
        )
    notes: list[str] = []
    hook_out = meta.get("hook_name_out") or cfg.get("hook_name_out")
    if not hook_out:
        hook_out = mlp_output_hook(hook_name)
        if hook_out is None:
            raise SaebenchError(
                f"{where}: SAELens {arch} records no output hook (metadata.hook_name_out) and its input hook "
                f"{hook_name!r} is not an MLP input (blocks.L.ln2.hook_normalized or blocks.L.hook_mlp_in) to infer "
                'it from; add "hook_name_out" (e.g. blocks.L.hook_mlp_out) under "metadata" in cfg.json'
            )
        notes.append(f"no metadata.hook_name_out: {hook_name} is an MLP input, so the output hook is {hook_out}")
    notes.insert(0, f"transcoder: reads {hook_name}, predicts {hook_out} (d_out={d_out})")
    if skip:
        notes.append("skip term W_skip [d_out, d_in] kept: output = decode(encode(x)) + x W_skip^T")
    fields = {"d_out": d_out, "hook_name_out": hook_out, "skip_connection": skip, "apply_b_dec_to_input": False}
    return fields, notes


def check_head_layout(cfg: dict[str, Any], meta: dict[str, Any], hook_name: str | None, where: str) -> list[str]:
    """Per-head SAEs. A ``hook_z`` SAE (SAELens 6 ``reshape_activations="hook_z"``; before 6.0 only its
    hook name ``blocks.L.attn.hook_z`` said so, and SAELens infers the flag from it) reads the attention
    heads' outputs ``[.., n_heads, d_head]`` flattened head-major to ``n_heads * d_head``, which is what
    our pipeline hands an SAE at ``attn.hook_z``: it loads as an ordinary SAE, and its width is checked
    against the model's heads before anything is allocated. A single-head SAE (``hook_head_index``; 5.x
    ``hook_point_head_index``) reads one head's ``d_head`` slice only, and the splice replaces whole
    hooks: refused. Returns the notes to keep."""
    head = next((v for v in (cfg.get("hook_head_index"), cfg.get("hook_point_head_index"),
                             meta.get("hook_head_index")) if v is not None), None)  # fmt: skip
    if head is not None:
        raise SaebenchError(
            f"{where}: a single-head SAELens SAE (hook_head_index={head}) reads one attention head's d_head slice, "
            "but saebench replaces a whole hook and has no per-head splice; evaluate an SAE over all heads instead "
            "(a hook_z SAE: reshape_activations='hook_z', d_in = n_heads * d_head)"
        )
    reshape = cfg.get("reshape_activations") or "none"
    if reshape not in ("none", "hook_z"):
        raise SaebenchError(
            f"{where}: SAELens reshape_activations={reshape!r} is not supported (none and hook_z are); "
            "wrap the SAE in a python:FILE.py:FACTORY"
        )
    at_z = bool(hook_name) and str(hook_name).endswith("attn.hook_z")
    if reshape == "hook_z" and hook_name and not at_z:
        raise SaebenchError(
            f"{where}: reshape_activations='hook_z' but hook_name={hook_name!r} is not an attn.hook_z hook; "
            "fix hook_name in cfg.json (blocks.L.attn.hook_z)"
        )
    if reshape == "hook_z" or at_z:
        return [
            "hook_z SAE: reads attn.hook_z [.., n_heads, d_head] flattened head-major to n_heads*d_head "
            "(as SAELens' hook_z reshaping does)" + ("" if hook_name else "; pass --hook blocks.L.attn.hook_z")
        ]
    return []


def from_sae_lens_parts(raw: dict[str, Any], tensors: dict[str, torch.Tensor], where: str) -> Converted:
    """Map a SAELens config dict (5.x or 6.x) and state dict onto the native module."""
    cfg = dict(raw)
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    arch = cfg.get("architecture") or "standard"
    act_fn = cfg.get("activation_fn") or cfg.get("activation_fn_str")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if arch == "standard" and act_fn == "topk":  # SAELens 5 spelled TopK as a standard SAE with a topk activation
        arch = "topk"
    notes: list[str] = []
    if "transcoder" in str(arch) and arch not in SAE_LENS_TRANSCODERS:
        raise SaebenchError(
            f"{where}: SAELens transcoder flavour {arch!r} is not supported (supported: "
            f"{', '.join(SAE_LENS_TRANSCODERS)}); wrap the sae-lens object in a factory and pass "
            "--sae python:FILE.py:FACTORY"
        )
    if arch not in SAE_LENS_ARCH and arch not in SAE_LENS_TRANSCODERS:
        raise SaebenchError(
            f"{where}: SAELens architecture {arch!r} is not supported (supported: "
            f"{', '.join([*SAE_LENS_ARCH, *SAE_LENS_TRANSCODERS])}); "
            "wrap the sae-lens object in a factory and pass --sae python:FILE.py:FACTORY"
        )
    hook_name = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    notes += check_head_layout(cfg, meta, hook_name, where)
    norm = cfg.get("normalize_activations") or "none"
    if norm is True:
        norm = "expected_average_only_in"
    if norm in ("expected_average_only_in", "covariance_whitening"):
        notes.append(
            f"SAELens normalize_activations={norm!r} is identity at inference (SAELens folds it into the weights "
            "when saving)"
        )
        norm = "none"
    elif norm not in ("none", False, "layer_norm"):
        raise SaebenchError(
            f"{where}: SAELens normalize_activations={norm!r} is not supported (none, layer_norm, "
            "expected_average_only_in are)"
        )
    norm = "layer_norm" if norm == "layer_norm" else "none"
    t = {k: v for k, v in tensors.items()}
    for needed in ("W_enc", "W_dec", "b_dec"):
        if needed not in t:
            raise SaebenchError(f"{where}: lacks tensor {needed}; not a complete SAELens SAE")
    if "scaling_factor" in t or "finetuning_scaling_factor" in t:
        s = t.pop("scaling_factor", t.pop("finetuning_scaling_factor", None))
        if s is not None and not torch.allclose(s, torch.ones_like(s)):
            t["W_dec"] = t["W_dec"] * s.to(t["W_dec"].dtype)[:, None]
            notes.append("SAELens finetuning scaling_factor folded into W_dec")
    k = cfg.get("k") if cfg.get("k") is not None else kwargs.get("k")
    # (a BatchTopK training save too: SAELens folds the same way when it saves the inference SAE)
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk") and cfg.get("rescale_acts_by_decoder_norm"):
        n = t["W_dec"].norm(dim=-1).clamp(min=1e-8)
        t["W_enc"], t["b_enc"], t["W_dec"] = t["W_enc"] * n, t["b_enc"] * n, t["W_dec"] / n[:, None]
        notes.append("rescale_acts_by_decoder_norm folded into W_enc, b_enc, W_dec")
    if arch in ("batchtopk", "matryoshka_batchtopk") and "topk_threshold" in t:
        t["threshold"] = t.pop("topk_threshold")
    ours = SAE_LENS_ARCH.get(arch) or SAE_LENS_TRANSCODERS[arch][0]
    transcoder: dict[str, Any] = {}
    if arch in SAE_LENS_TRANSCODERS:
        transcoder, more = transcoder_fields(arch, cfg, meta, hook_name, t, where)
        notes += more
    training_arch = meta.get("training_architecture") or cfg.get("training_architecture")
    if ours == "jumprelu":
        if "threshold" in t:
            t["threshold"] = jump_threshold(t["threshold"], notes)
        th = t.get("threshold")
        if (
            arch == "jumprelu"
            and training_arch in ("batchtopk", "matryoshka_batchtopk")
            and th is not None
            and th.numel()
            and bool((th == th.reshape(-1)[0]).all())
        ):
            ours = "batchtopk"
            t["threshold"] = th.reshape(-1)[0].reshape(())
            notes.append("SAELens saved this BatchTopK SAE as JumpReLU with one uniform threshold; loaded as batchtopk")
    # Matryoshka: the training config's widths (``matryoshka_widths``), kept at the top level by a
    # training SAE's save, in metadata.training_architecture_details by the inference save (JumpReLU)
    details = (
        meta.get("training_architecture_details") if isinstance(meta.get("training_architecture_details"), dict) else {}
    )
    widths = cfg.get("matryoshka_widths") or details.get("matryoshka_widths")
    if arch == "matryoshka_batchtopk" or training_arch == "matryoshka_batchtopk" or widths:
        if widths:
            notes.append(f"Matryoshka prefix widths {list(widths)} kept (matryoshka_widths)")
        else:
            notes.append("a Matryoshka SAE without matryoshka_widths in its config: loaded as a plain SAE")
    if ours in ("topk",) and not k:
        raise SaebenchError(f"{where}: a TopK SAELens config needs 'k'; add it to cfg.json")
    if arch == "gated":
        t.pop("b_enc", None)
    sae = assemble(
        ours,
        t,
        where,
        k=int_field(k, "k", where) or None,
        hook_name=hook_name,
        model_name=meta.get("model_name") or cfg.get("model_name"),
        normalize_activations=norm,
        source_format="sae_lens",
        source_architecture=arch,
        **({"matryoshka_widths": list(widths)} if widths else {}),
        **({"apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True))} if not transcoder else transcoder),
    )
    return Converted(sae, "sae_lens", ours, [f"SAELens architecture {arch!r} → {ours}", *notes])


def load_sae_lens_dir(path: str | Path) -> Converted:
    """A SAELens folder (``cfg.json`` + ``sae_weights.safetensors``); sae-lens itself is not needed."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    expect_format(p, "sae_lens")
    raw = read_config(p / "cfg.json")
    weights = p / "sae_weights.safetensors"
    header = safetensors_shapes(weights)
    d_in, d_sae = int_field(raw.get("d_in"), "d_in", str(p)), int_field(raw.get("d_sae"), "d_sae", str(p))
    d_out = d_in  # a transcoder's decoder writes d_out (SAELens always saves it; else any width, checked on load)
    if "transcoder" in str(raw.get("architecture")):  # (an unknown flavour is named by from_sae_lens_parts)
        d_out = int_field(raw.get("d_out"), "d_out", str(p))
    expect: dict[str, tuple[int | None, ...]] = {
        "W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_enc": (d_sae,), "b_dec": (d_out,), "W_skip": (d_out, d_in)
    }  # fmt: skip
    check_header(weights, header, expect)
    check_load_memory(weights)
    tensors = read_safetensors(weights)
    return from_sae_lens_parts(raw, tensors, str(p))


def load_sae_lens_pretrained(release_id: str) -> Converted:
    """``RELEASE/ID`` through the sae-lens package (downloads from the hub; needs network)."""
    if Path(release_id).is_dir():
        return load_sae_lens_dir(release_id)
    release, sep, sae_id = release_id.partition("/")
    if not sep or not release or not sae_id:
        raise SaebenchError(
            f"sae_lens:{release_id!r} must look like sae_lens:RELEASE/ID (e.g. "
            "sae_lens:gpt2-small-res-jb/blocks.8.hook_resid_pre) or sae_lens:FOLDER"
        )
    try:
        from sae_lens import SAE
    except ImportError as exc:
        raise SaebenchError("sae_lens:RELEASE/ID needs the sae-lens package: pip install sae-lens") from exc
    try:
        sae = SAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as exc:
        raise SaebenchError(
            f"sae-lens could not load release {release!r} id {sae_id!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}); "
            "check the names in sae-lens' pretrained_saes.yaml and your hub access"
        ) from exc
    if isinstance(sae, tuple):  # sae-lens < 6 returned (sae, cfg, sparsity)
        sae = sae[0]
    raw = sae.cfg.to_dict()
    tensors = {k: v.detach().cpu() for k, v in sae.state_dict().items()}
    conv = from_sae_lens_parts(raw, tensors, f"sae_lens:{release_id}")
    conv.name = f"{release}__{sae_id}"
    return conv
