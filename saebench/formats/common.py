"""What every format loader shares: detection from files, reading configs and state dicts, and
assembling a :class:`~saebench.sae.NativeSAE` from SAELens-named tensors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saebench.errors import SaebenchError
from saebench.io import read_json_object, safetensors_header, torch_load_weights_only
from saebench.sae import ARCHITECTURES, NativeSAE, SAEConfig, check_finite, native_shapes, parse_config

LABELS = {
    "native": "saebench native folder",
    "sae_lens": "SAELens folder",
    "sparsify": "EleutherAI sparsify checkpoint",
    "openai": "OpenAI sparse_autoencoder state dict",
    "dictionary_learning": "dictionary_learning ae.pt",
}
SPARSIFY_KEYS = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}


@dataclass
class Converted:
    """A converted SAE: the native module, the format and architecture found, and notes."""

    sae: NativeSAE
    format: str
    architecture: str
    notes: list[str] = field(default_factory=list)
    name: str | None = None


def read_config(path: Path) -> dict[str, Any]:
    return read_json_object(path, "config")


def safetensors_keys(path: Path) -> set[str]:
    """Tensor names from a safetensors header (plain reads, no mmap); empty when unreadable."""
    try:
        return set(safetensors_header(path))
    except SaebenchError:
        return set()


_LAST_LOAD: dict[tuple[str, int, int], Any] = {}


def load_state_dict(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a file that needs arbitrary unpickling is refused.

    The last file read is remembered (by path, mtime and size), so detecting a format and then
    loading it reads the file once.
    """
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    if key not in _LAST_LOAD:
        obj = torch_load_weights_only(path, fix="then load it again")
        _LAST_LOAD.clear()
        _LAST_LOAD[key] = obj
    return _LAST_LOAD[key]


def state_dict_format(sd: Any) -> str | None:
    """Which library wrote a state dict, from its key names."""
    if not isinstance(sd, dict):
        return None
    keys = set(sd)
    if {"pre_bias", "latent_bias", "encoder.weight"} <= keys:
        return "openai"
    if {"encoder.weight", "decoder.weight"} <= keys and ("bias" in keys or "b_dec" in keys or "decoder.bias" in keys):
        return "dictionary_learning"
    if {"decoder_bias", "gate_bias", "mag_bias", "r_mag"} <= keys:
        return "dictionary_learning"
    if {"W_enc", "W_dec", "b_dec"} <= keys:
        return "native"  # also dictionary_learning's JumpReLU / Matryoshka layouts: decided by the config file
    return None


def detect_format(path: str | Path) -> str | None:
    """The format of a folder or file, native first; None when nothing matches."""
    p = Path(path)
    if p.is_dir():
        cfg = p / "cfg.json"
        if cfg.is_file() and (p / "sae.safetensors").is_file():
            keys = safetensors_keys(p / "sae.safetensors")
            try:
                raw = read_json_object(cfg)
            except SaebenchError:
                raw = {}
            if "W_enc" in keys or raw.get("architecture") in ARCHITECTURES:
                return "native"
            if "encoder.weight" in keys or ({"k", "expansion_factor"} <= set(raw)):
                return "sparsify"
            return "native"
        if cfg.is_file() and (p / "sae_weights.safetensors").is_file():
            return "sae_lens"
        if (p / "ae.pt").is_file():
            return "dictionary_learning"
        if not cfg.is_file() and any(c.is_dir() and detect_format(c) == "sparsify" for c in sorted(p.iterdir())[:64]):
            return "sparsify"  # a sparsify run folder: one subfolder per hookpoint (load_sparsify names them)
        return None
    if p.is_file():
        if p.name == "sae_weights.safetensors":
            return "sae_lens"
        if p.name == "sae.safetensors":
            return detect_format(p.parent)
        if p.suffix in (".pt", ".pth", ".bin"):
            if (p.parent / "config.json").is_file() and not (p.parent / "cfg.json").is_file():
                return "dictionary_learning"
            try:
                sd = load_state_dict(p)
            except SaebenchError:
                return None
            fmt = state_dict_format(sd)
            return "native" if fmt == "native" and (p.parent / "cfg.json").is_file() else fmt
    return None


def expect_format(path: Path, want: str) -> None:
    """Raise naming the format ``path`` looks like when it is not ``want``."""
    found = detect_format(path)
    if found == want:
        return
    if found is None:
        raise SaebenchError(f"{path} is not a {LABELS[want]} (nothing recognisable there); check the path")
    hint = f"--sae {found}:{path}" if found != "native" else f"--sae {path}"
    raise SaebenchError(f"{path} looks like a {LABELS[found]}, not a {LABELS[want]}; load it with {hint}")


def assemble(arch: str, tensors: dict[str, torch.Tensor], where: str, **cfg: Any) -> NativeSAE:
    """Build a NativeSAE from SAELens-named tensors, checking the config, shapes and finiteness
    before anything new is allocated (the module's parameters are the converted tensors).

    ``d_in`` is read from ``W_dec [d_sae, d_in]``; a transcoder's caller passes ``d_out`` (its
    ``W_dec`` is ``[d_sae, d_out]``), and ``d_in`` is then read from ``W_enc [d_in, d_sae]``."""
    w_dec = tensors.get("W_dec")
    if w_dec is None or w_dec.ndim != 2:
        shape = list(w_dec.shape) if w_dec is not None else None
        raise SaebenchError(f"{where}: decoder weight has shape {shape}, expected [d_sae, d_in]; the file is malformed")
    d_sae, d_in = w_dec.shape
    if cfg.get("d_out") is not None:
        w_enc = tensors.get("W_enc")
        if w_enc is None or w_enc.ndim != 2:
            shape = list(w_enc.shape) if w_enc is not None else None
            raise SaebenchError(
                f"{where}: encoder weight has shape {shape}, expected [d_in, d_sae]; the file is malformed"
            )
        d_in = w_enc.shape[0]
    conf = parse_config({"architecture": arch, "d_in": int(d_in), "d_sae": int(d_sae), **cfg}, where)
    expected = native_shapes(conf)
    params: dict[str, torch.Tensor] = {}
    for name, shape in expected.items():
        if name not in tensors:
            if name == "b_enc" and arch == "gated":
                continue  # unused by the gated encoder
            if name == "threshold" and arch == "batchtopk":
                continue  # NaN: per-token TopK
            raise SaebenchError(f"{where}: lacks tensor {name} needed by architecture {arch!r}; the file is incomplete")
        t = tensors[name]
        if name == "threshold" and arch == "batchtopk":
            t = t.reshape(-1)[0].reshape(()) if t.numel() else t
        elif tuple(t.shape) != shape:
            raise SaebenchError(f"{where}: tensor {name} has shape {list(t.shape)}, expected {list(shape)}")
        params[name] = t.detach().to(torch.float32)
    check_finite(params, where)
    return NativeSAE.from_tensors(conf, params).eval()


def int_field(value: Any, name: str, where: str) -> int | None:
    """An integer setting read from a foreign config or state dict (None when absent)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise SaebenchError(f"{where}: {name} is {value!r}, not an integer; fix the file")
    return int(value)


def check_header(path: Path, header: dict[str, tuple[int, ...]], expect: dict[str, tuple[int | None, ...]]) -> None:
    """Compare tensor shapes in a safetensors header with what the config says (None: any size),
    before any tensor is read."""
    for name, want in expect.items():
        got = header.get(name)
        if got is None:
            continue  # missing tensors are named by the loader
        if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want, strict=False)):
            shown = [w if w is not None else "*" for w in want]
            raise SaebenchError(f"{path}: tensor {name} has shape {list(got)}, but its config implies {shown}")


def jump_threshold(theta: torch.Tensor, notes: list[str]) -> torch.Tensor:
    """Libraries compute ReLU(pre) * 1[pre > θ]; ours is pre * 1[pre > θ]. Identical for θ ≥ 0,
    and ReLU(pre)·1[pre > θ] = pre·1[pre > max(θ, 0)] for any θ, so negative thresholds clamp to 0."""
    if bool((theta < 0).any()):
        notes.append(
            f"{int((theta < 0).sum())} negative JumpReLU threshold(s) clamped to 0 (same outputs: the source "
            "applies ReLU too)"
        )
    return theta.clamp(min=0)


_HF_LAYER = re.compile(r"^(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h)\.(\d+)(\.mlp)?$")
_MLP_INPUT = re.compile(r"^blocks\.(\d+)\.(?:ln2\.hook_normalized|hook_mlp_in)$")


def hf_hookpoint_to_hook(hookpoint: str) -> str | None:
    """Where an SAE on a Hugging Face module's output reads, in transformer-lens names: a decoder
    layer (``layers.6``, ``h.6``) is ``blocks.6.hook_resid_post``, its MLP (``layers.6.mlp``) is
    ``blocks.6.hook_mlp_out``; other module paths have no automatic equivalent (None)."""
    m = _HF_LAYER.match(hookpoint)
    if not m:
        return None
    return f"blocks.{m.group(1)}.{'hook_mlp_out' if m.group(2) else 'hook_resid_post'}"


def hf_transcoder_hooks(hookpoint: str) -> tuple[str, str] | None:
    """The (input, output) hooks of a transcoder trained on a Hugging Face module's input and
    output: a decoder layer ``layers.L`` reads ``blocks.L.hook_resid_pre`` and writes
    ``blocks.L.hook_resid_post``; its MLP ``layers.L.mlp`` reads the MLP's input, the normalised
    residual ``blocks.L.ln2.hook_normalized``, and writes ``blocks.L.hook_mlp_out``. None for other
    module paths."""
    m = _HF_LAYER.match(hookpoint)
    if not m:
        return None
    layer = m.group(1)
    if m.group(2):
        return f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
    return f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_post"


def mlp_output_hook(hook_in: str | None) -> str | None:
    """``blocks.L.hook_mlp_out`` for an MLP-input hook (``blocks.L.ln2.hook_normalized`` or
    ``blocks.L.hook_mlp_in``): the output a transcoder reading the MLP's input predicts when its
    files do not say. None for any other hook."""
    m = _MLP_INPUT.match(hook_in or "")
    return f"blocks.{m.group(1)}.hook_mlp_out" if m else None


def fold_input_affine(sae: NativeSAE, scale: torch.Tensor, bias: torch.Tensor | None = None) -> NativeSAE:
    """The same SAE reading ``u`` where ``sae`` was trained on ``u * scale + bias``, exactly.

    A transcoder trained on a Hugging Face MLP's input saw ``ln2``'s output after its learned scale
    (and LayerNorm bias); transformer-lens' ``ln2.hook_normalized`` is before them. With ``scale``
    and ``bias`` the model's ``blocks[L].ln2.w`` / ``.b``, the folded SAE evaluated at
    ``ln2.hook_normalized`` is the trained one: with ``a = act_scale``,
    ``(u s + b) a W_enc + b_enc = (u a)(diag(s) W_enc) + (a b W_enc + b_enc)`` (the gated paths
    likewise), and the skip term ``(u s + b) W_skip^T = u (W_skip diag(s))^T + b W_skip^T``, whose
    constant joins ``b_dec``. A loader marks an SAE that needs this with the config key
    ``input_norm_affine`` (the norm module, e.g. ``blocks.6.ln2``); the folded SAE drops the mark."""
    cfg = sae.cfg
    if cfg.apply_b_dec_to_input or cfg.normalize_activations != "none":
        raise SaebenchError(
            "fold_input_affine needs an SAE without b_dec centring or layer_norm input normalisation "
            f"(this one: apply_b_dec_to_input={cfg.apply_b_dec_to_input}, "
            f"normalize_activations={cfg.normalize_activations!r})"
        )
    dev = sae.W_enc.device
    s = scale.detach().to(dev, torch.float32).reshape(-1)
    b = torch.zeros_like(s) if bias is None else bias.detach().to(dev, torch.float32).reshape(-1)
    if s.shape != (sae.d_in,) or b.shape != (sae.d_in,):
        raise SaebenchError(
            f"fold_input_affine: scale {list(s.shape)} and bias {list(b.shape)} must both be [d_in] = [{sae.d_in}]"
        )
    a = float(cfg.act_scale)
    t = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    shift = a * (b @ t["W_enc"])  # what the bias adds to every pre-activation
    t["W_enc"] = s[:, None] * t["W_enc"]
    if cfg.architecture == "gated":
        t["b_gate"] = t["b_gate"] + shift
        t["b_mag"] = t["b_mag"] + shift * torch.exp(t["r_mag"])
    else:
        t["b_enc"] = t["b_enc"] + shift
    if "W_skip" in t:
        t["b_dec"] = t["b_dec"] + a * (t["W_skip"] @ b)
        t["W_skip"] = t["W_skip"] * s[None, :]
    folded = SAEConfig(**{k: v for k, v in cfg.model_dump().items() if k != "input_norm_affine"})
    return NativeSAE.from_tensors(folded, t).to(dev).eval()


def apply_input_norm(sae: Any, model: Any) -> Any:
    """``sae`` with the norm its config key ``input_norm_affine`` names (e.g. ``blocks.6.ln2``) folded
    in from ``model`` (a :class:`~saebench.models.SubjectModel` or a ``HookedTransformer``) by
    :func:`fold_input_affine`: what an evaluation calls once the model is loaded, before encoding. An
    SAE without the mark is returned as it is. A model with no such module, or whose norm has no
    learned scale ``w`` (``fold_ln`` already moved it into the MLP), is a one-line error."""
    where = getattr(getattr(sae, "cfg", None), "input_norm_affine", None)
    if not where:
        return sae
    net = getattr(model, "model", model)
    try:
        norm = net.get_submodule(str(where))
    except AttributeError as exc:
        raise SaebenchError(
            f"the SAE was trained after the norm {where} (input_norm_affine), which the model does not have; "
            "evaluate it on the model it was trained on (--model)"
        ) from exc
    w = getattr(norm, "w", None)
    if not isinstance(w, torch.Tensor):
        raise SaebenchError(
            f"the SAE was trained after the learned scale of {where} (input_norm_affine), but the model's {where} "
            "has none (its scale was folded into the next layer): load the model without fold_ln"
        )
    b = getattr(norm, "b", None)
    return fold_input_affine(sae, w, b if isinstance(b, torch.Tensor) else None)
