"""Read the SAE formats other ecosystems publish, mapped onto :class:`~saebench.sae.NativeSAE`.

Every loader returns a :class:`Converted`: a native module that reproduces the source library's
own ``encode``/``decode`` (checked in ``tests/test_formats.py`` against each library's code), the
architecture it found, and notes on anything it had to fold or assume. Supported layouts:

``sae_lens``  a folder with ``cfg.json`` + ``sae_weights.safetensors`` (SAELens' ``save_model``),
              or ``sae_lens:RELEASE/ID`` through the installed sae-lens package (needs hub access).
              Architectures ``standard`` (→ relu), ``topk``, ``jumprelu`` (→ batchtopk when SAELens
              saved a BatchTopK SAE as a JumpReLU with one uniform threshold), ``gated``; SAELens 5
              configs (``activation_fn_kwargs.k``, ``hook_point``) too. ``apply_b_dec_to_input``
              and ``normalize_activations`` are honoured (``layer_norm`` is per token, see
              ``saebench.sae``; ``expected_average_only_in`` is identity at inference in SAELens,
              which folds the factor into the weights when it saves); ``rescale_acts_by_decoder_norm``
              and an old ``scaling_factor`` tensor are folded into the weights exactly.
``sparsify``  EleutherAI sparsify, one hookpoint folder with ``cfg.json`` + ``sae.safetensors``
              (``encoder.weight [d_sae, d_in]``, ``encoder.bias``, ``W_dec``, ``b_dec``; ``k`` in
              cfg). Our native format uses the same two file names, so detection looks at the
              tensor names. TopK only; ``groupmax``, skip connections and transcoders are refused.
``openai``    openai/sparse_autoencoder state dicts (``pre_bias``, ``latent_bias``,
              ``encoder.weight``, ``decoder.weight``, ``activation`` = ``ReLU`` or ``TopK``).
              Their ``from_state_dict`` turns on per-token LayerNorm of the input for TopK
              autoencoders; we do the same (``normalize_activations = "layer_norm"``).
``dictionary_learning``  saprmarks/dictionary_learning ``ae.pt`` + ``config.json`` as written by
              ``trainSAE``: ``AutoEncoder`` (standard / April-update trainers), ``AutoEncoderNew``,
              ``AutoEncoderTopK``, ``BatchTopKSAE``, ``MatryoshkaBatchTopKSAE``,
              ``JumpReluAutoEncoder``, ``GatedAutoEncoder``.

``.pt`` files are only ever read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saebench.errors import SaebenchError
from saebench.sae import ARCHITECTURES, NativeSAE, SAEConfig, check_finite, read_safetensors

FORMATS = ("native", "sae_lens", "sparsify", "openai", "dictionary_learning")
PREFIXES = ("sae_lens", "sparsify", "openai", "dictionary_learning", "native")
LABELS = {
    "native": "saebench native folder",
    "sae_lens": "SAELens folder",
    "sparsify": "EleutherAI sparsify checkpoint",
    "openai": "OpenAI sparse_autoencoder state dict",
    "dictionary_learning": "dictionary_learning ae.pt",
}
_SPARSIFY_KEYS = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}


@dataclass
class Converted:
    """A converted SAE: the native module, the format and architecture found, and notes."""

    sae: NativeSAE
    format: str
    architecture: str
    notes: list[str] = field(default_factory=list)
    name: str | None = None


# ---------------------------------------------------------------------------------------------
# detection


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SaebenchError(f"{path} is not valid JSON ({type(exc).__name__}); fix or re-download it") from exc
    if not isinstance(data, dict):
        raise SaebenchError(f"{path} is not a JSON object; fix or re-download it")
    return data


def _safetensors_keys(path: Path) -> set[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return set(fh.keys())
    except (SafetensorError, OSError, ValueError):
        return set()


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a file that needs arbitrary unpickling is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as exc:
        raise SaebenchError(
            f"{path} cannot be read with torch.load(weights_only=True) ({str(exc).splitlines()[0][:120]}); "
            "re-save it as a plain state dict of tensors"
        ) from exc
    except Exception as exc:
        raise SaebenchError(f"{path} is not a readable torch file ({type(exc).__name__}); it may be truncated") from exc


def _state_dict_format(sd: Any) -> str | None:
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
            keys = _safetensors_keys(p / "sae.safetensors")
            try:
                raw = json.loads(cfg.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                raw = {}
            raw = raw if isinstance(raw, dict) else {}
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
                sd = torch.load(p, map_location="cpu", weights_only=True)
            except Exception:
                return None
            fmt = _state_dict_format(sd)
            return "native" if fmt == "native" and (p.parent / "cfg.json").is_file() else fmt
    return None


def _expect(path: Path, want: str) -> None:
    """Raise naming the format ``path`` looks like when it is not ``want``."""
    found = detect_format(path)
    if found == want:
        return
    if found is None:
        raise SaebenchError(f"{path} is not a {LABELS[want]} (nothing recognisable there); check the path")
    hint = f"--sae {found}:{path}" if found != "native" else f"--sae {path}"
    raise SaebenchError(f"{path} looks like a {LABELS[found]}, not a {LABELS[want]}; load it with {hint}")


# ---------------------------------------------------------------------------------------------
# assembling a native module


def _assemble(arch: str, tensors: dict[str, torch.Tensor], where: str, **cfg: Any) -> NativeSAE:
    """Build a NativeSAE from SAELens-named tensors, checking shapes and finiteness."""
    d_sae, d_in = tensors["W_dec"].shape
    sae = NativeSAE(SAEConfig(architecture=arch, d_in=int(d_in), d_sae=int(d_sae), **cfg))
    tensors = {k: v.detach().to(torch.float32) for k, v in tensors.items()}
    check_finite(tensors, where)
    state = sae.state_dict()
    for name, target in state.items():
        if name not in tensors:
            if name == "b_enc" and arch == "gated":
                continue  # unused by the gated encoder
            if name == "threshold" and arch == "batchtopk":
                continue  # NaN: per-token TopK
            raise SaebenchError(f"{where}: lacks tensor {name} needed by architecture {arch!r}; the file is incomplete")
        t = tensors[name]
        if name == "threshold" and arch == "batchtopk":
            t = t.reshape(-1)[0].reshape(()) if t.numel() else t
        elif tuple(t.shape) != tuple(target.shape):
            raise SaebenchError(f"{where}: tensor {name} has shape {list(t.shape)}, expected {list(target.shape)}")
        with torch.no_grad():
            getattr(sae, name).copy_(t)
    return sae.eval()


def _jump_threshold(theta: torch.Tensor, notes: list[str]) -> torch.Tensor:
    """Libraries compute ReLU(pre) * 1[pre > θ]; ours is pre * 1[pre > θ]. Identical for θ ≥ 0,
    and ReLU(pre)·1[pre > θ] = pre·1[pre > max(θ, 0)] for any θ, so negative thresholds clamp to 0."""
    if bool((theta < 0).any()):
        notes.append(f"{int((theta < 0).sum())} negative JumpReLU threshold(s) clamped to 0 (same outputs: the source applies ReLU too)")
    return theta.clamp(min=0)


_HF_LAYER = re.compile(r"^(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h)\.(\d+)$")


def hf_hookpoint_to_hook(hookpoint: str) -> str | None:
    """A Hugging Face decoder-layer output (``layers.6``, ``h.6``) is transformer-lens'
    ``blocks.6.hook_resid_post``; other module paths have no automatic equivalent."""
    m = _HF_LAYER.match(hookpoint)
    return f"blocks.{m.group(1)}.hook_resid_post" if m else None


# ---------------------------------------------------------------------------------------------
# SAELens


SAE_LENS_ARCH = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated", "batchtopk": "batchtopk"}


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
    if arch not in SAE_LENS_ARCH:
        raise SaebenchError(
            f"{where}: SAELens architecture {arch!r} is not supported (supported: {', '.join(SAE_LENS_ARCH)}); "
            "wrap the sae-lens object in a factory and pass --sae python:FILE.py:FACTORY"
        )
    if cfg.get("reshape_activations", "none") not in ("none", None) or cfg.get("hook_head_index") is not None:
        raise SaebenchError(f"{where}: per-head (hook_z) SAELens SAEs are not supported; use a residual/MLP SAE or a python:FILE.py:FACTORY wrapper")
    norm = cfg.get("normalize_activations") or "none"
    if norm is True:
        norm = "expected_average_only_in"
    if norm in ("expected_average_only_in", "covariance_whitening"):
        notes.append(f"SAELens normalize_activations={norm!r} is identity at inference (SAELens folds it into the weights when saving)")
        norm = "none"
    elif norm not in ("none", False, "layer_norm"):
        raise SaebenchError(f"{where}: SAELens normalize_activations={norm!r} is not supported (none, layer_norm, expected_average_only_in are)")
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
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        n = t["W_dec"].norm(dim=-1).clamp(min=1e-8)
        t["W_enc"], t["b_enc"], t["W_dec"] = t["W_enc"] * n, t["b_enc"] * n, t["W_dec"] / n[:, None]
        notes.append("rescale_acts_by_decoder_norm folded into W_enc, b_enc, W_dec")
    if arch == "batchtopk" and "topk_threshold" in t:
        t["threshold"] = t.pop("topk_threshold")
    ours = SAE_LENS_ARCH[arch]
    training_arch = meta.get("training_architecture") or cfg.get("training_architecture")
    if arch == "jumprelu":
        if "threshold" in t:
            t["threshold"] = _jump_threshold(t["threshold"], notes)
        th = t.get("threshold")
        if training_arch in ("batchtopk", "matryoshka_batchtopk") and th is not None and th.numel() and bool((th == th.reshape(-1)[0]).all()):
            ours = "batchtopk"
            t["threshold"] = th.reshape(-1)[0].reshape(())
            notes.append("SAELens saved this BatchTopK SAE as JumpReLU with one uniform threshold; loaded as batchtopk")
    if ours in ("topk",) and not k:
        raise SaebenchError(f"{where}: a TopK SAELens config needs 'k'; add it to cfg.json")
    if arch == "gated":
        t.pop("b_enc", None)
    sae = _assemble(
        ours, t, where, k=int(k) if k else None,
        hook_name=meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point"),
        model_name=meta.get("model_name") or cfg.get("model_name"),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)), normalize_activations=norm,
        source_format="sae_lens", source_architecture=arch,
    )
    return Converted(sae, "sae_lens", ours, [f"SAELens architecture {arch!r} → {ours}", *notes])


def load_sae_lens_dir(path: str | Path) -> Converted:
    """A SAELens folder (``cfg.json`` + ``sae_weights.safetensors``); sae-lens itself is not needed."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    _expect(p, "sae_lens")
    raw = _json(p / "cfg.json")
    tensors = read_safetensors(p / "sae_weights.safetensors")
    return from_sae_lens_parts(raw, tensors, str(p))


def load_sae_lens_pretrained(release_id: str) -> Converted:
    """``RELEASE/ID`` through the sae-lens package (downloads from the hub; needs network)."""
    if Path(release_id).is_dir():
        return load_sae_lens_dir(release_id)
    release, sep, sae_id = release_id.partition("/")
    if not sep or not release or not sae_id:
        raise SaebenchError(f"sae_lens:{release_id!r} must look like sae_lens:RELEASE/ID (e.g. sae_lens:gpt2-small-res-jb/blocks.8.hook_resid_pre) or sae_lens:FOLDER")
    try:
        from sae_lens import SAE
    except ImportError as exc:
        raise SaebenchError("sae_lens:RELEASE/ID needs the sae-lens package: pip install sae-lens") from exc
    try:
        sae = SAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as exc:
        raise SaebenchError(
            f"sae-lens could not load release {release!r} id {sae_id!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
            "check the names in sae-lens' pretrained_saes.yaml and your hub access"
        ) from exc
    if isinstance(sae, tuple):  # sae-lens < 6 returned (sae, cfg, sparsity)
        sae = sae[0]
    raw = sae.cfg.to_dict()
    tensors = {k: v.detach().cpu() for k, v in sae.state_dict().items()}
    conv = from_sae_lens_parts(raw, tensors, f"sae_lens:{release_id}")
    conv.name = f"{release}__{sae_id}"
    return conv


# ---------------------------------------------------------------------------------------------
# EleutherAI sparsify


def load_sparsify(path: str | Path) -> Converted:
    """One sparsify hookpoint folder (``cfg.json`` + ``sae.safetensors``)."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if p.is_dir() and not (p / "cfg.json").is_file():
        hooks = sorted(c.name for c in p.iterdir() if (c / "cfg.json").is_file() and (c / "sae.safetensors").is_file())
        if hooks:
            raise SaebenchError(f"{p} holds one sparsify SAE per hookpoint ({', '.join(hooks[:6])}); pass one folder, e.g. sparsify:{p / hooks[0]}")
    _expect(p, "sparsify")
    raw = _json(p / "cfg.json")
    t = read_safetensors(p / "sae.safetensors")
    where = str(p)
    if raw.get("transcode"):
        raise SaebenchError(f"{where} is a sparsify transcoder (predicts a module's output), not an SAE; saebench evaluates SAEs")
    if raw.get("skip_connection") or "W_skip" in t:
        raise SaebenchError(f"{where}: sparsify skip connections (W_skip) are not supported; wrap it with --sae python:FILE.py:FACTORY")
    act = raw.get("activation", "topk")
    if act != "topk" or raw.get("signed"):
        raise SaebenchError(f"{where}: sparsify activation {act!r}{' (signed)' if raw.get('signed') else ''} is not supported, only topk")
    missing = sorted(_SPARSIFY_KEYS - set(t))
    if missing:
        raise SaebenchError(f"{where}: sae.safetensors lacks {', '.join(missing)}; not a complete sparsify SAE (saved without decoder?)")
    k = raw.get("k")
    if not k:
        raise SaebenchError(f"{where}: sparsify cfg.json has no 'k'; add the number of active latents")
    notes = ["EleutherAI sparsify TopK (ReLU, then top-k)"]
    hook = hf_hookpoint_to_hook(p.name)
    if hook:
        notes.append(f"hookpoint {p.name!r} (a Hugging Face module output) mapped to {hook}")
    else:
        notes.append(f"hookpoint {p.name!r} has no automatic transformer-lens name: pass --hook")
    model_name = None
    parent_cfg = p.parent / "config.json"
    if parent_cfg.is_file():
        try:
            model_name = json.loads(parent_cfg.read_text()).get("model")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            model_name = None
    tensors = {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    sae = _assemble("topk", tensors, where, k=int(k), hook_name=hook, model_name=model_name,
                    source_format="sparsify", source_hookpoint=p.name)
    return Converted(sae, "sparsify", "topk", notes, name=f"{p.parent.name}-{p.name}" if p.parent.name else p.name)


# ---------------------------------------------------------------------------------------------
# OpenAI sparse_autoencoder


def load_openai(path: str | Path) -> Converted:
    """An openai/sparse_autoencoder ``Autoencoder.state_dict()`` saved with ``torch.save``."""
    p = Path(path)
    if not p.is_file():
        raise SaebenchError(f"{p} is not a file; an OpenAI sparse_autoencoder SAE is one .pt state dict")
    sd = _torch_load(p)
    fmt = _state_dict_format(sd)
    if fmt != "openai":
        other = LABELS.get(fmt or "", "")
        raise SaebenchError(
            f"{p} is not an OpenAI sparse_autoencoder state dict (no pre_bias/latent_bias/encoder.weight)"
            + (f"; it looks like a {other}" if other else "; check the file")
        )
    where = str(p)
    act = sd.get("activation", "ReLU")
    act_sd = sd.get("activation_state_dict") or {}
    enc = sd["encoder.weight"]
    if "decoder.weight" in sd:
        w_dec = sd["decoder.weight"].T
    elif "decoder.linear.weight" in sd:  # tied decoder: decoder(z) = z @ encoder.weight
        w_dec = sd["decoder.linear.weight"]
    else:
        raise SaebenchError(f"{where}: no decoder.weight; the state dict is incomplete")
    notes = []
    if act == "TopK":
        post = act_sd.get("postact_fn", "ReLU")
        if post != "ReLU":
            raise SaebenchError(f"{where}: TopK with postact_fn {post!r} is not supported (only ReLU)")
        k = int(act_sd["k"]) if "k" in act_sd else None
        if not k:
            raise SaebenchError(f"{where}: TopK activation without k in activation_state_dict")
        arch, norm = "topk", "layer_norm"
        notes.append("OpenAI TopK autoencoder: per-token LayerNorm of the input, undone on decode (as their from_state_dict does)")
    elif act == "ReLU":
        arch, norm, k = "relu", "none", None
    else:
        raise SaebenchError(f"{where}: OpenAI activation {act!r} is not supported (ReLU, TopK are)")
    notes.append("OpenAI files do not record the model or hook: pass --model and --hook")
    tensors = {"W_enc": enc.T, "b_enc": sd["latent_bias"], "W_dec": w_dec, "b_dec": sd["pre_bias"]}
    sae = _assemble(arch, tensors, where, k=k, normalize_activations=norm, source_format="openai")
    return Converted(sae, "openai", arch, notes, name=p.stem)


# ---------------------------------------------------------------------------------------------
# saprmarks dictionary_learning


DL_CLASSES = {
    "AutoEncoder": "relu", "AutoEncoderNew": "relu", "AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk",
    "MatryoshkaBatchTopKSAE": "batchtopk", "JumpReluAutoEncoder": "jumprelu", "GatedAutoEncoder": "gated",
}


def _dl_class(sd: dict[str, Any], dict_class: str | None) -> str:
    keys = set(sd)
    if dict_class in DL_CLASSES:
        return dict_class
    if {"decoder_bias", "gate_bias"} <= keys:
        return "GatedAutoEncoder"
    if "group_sizes" in keys:
        return "MatryoshkaBatchTopKSAE"
    if {"W_enc", "threshold"} <= keys:
        return "JumpReluAutoEncoder"
    if "decoder.bias" in keys:
        return "AutoEncoderNew"
    if {"b_dec", "k"} <= keys:
        return "AutoEncoderTopK"  # BatchTopKSAE has the same tensors: config.json's dict_class decides
    if "bias" in keys:
        return "AutoEncoder"
    raise SaebenchError(f"unrecognised dictionary_learning state dict (keys {', '.join(sorted(keys)[:8])}); add config.json with trainer.dict_class")


def load_dictionary_learning(path: str | Path) -> Converted:
    """A ``trainSAE`` output folder (``ae.pt`` + ``config.json``) or the ``ae.pt`` itself."""
    p = Path(path)
    pt = p / "ae.pt" if p.is_dir() else p
    if not pt.is_file():
        found = detect_format(p)
        if found:
            raise SaebenchError(f"{p} looks like a {LABELS[found]}, not a dictionary_learning ae.pt; load it with --sae {found}:{p}")
        raise SaebenchError(f"{p} has no ae.pt; a dictionary_learning SAE is ae.pt + config.json from trainSAE")
    sd = _torch_load(pt)
    fmt = _state_dict_format(sd)
    if fmt == "openai":
        raise SaebenchError(f"{pt} looks like an OpenAI sparse_autoencoder state dict, not dictionary_learning; load it with --sae openai:{pt}")
    if not isinstance(sd, dict) or fmt is None:
        raise SaebenchError(f"{pt} is not a dictionary_learning state dict; check the file")
    trainer: dict[str, Any] = {}
    cfg_path = pt.parent / "config.json"
    if cfg_path.is_file():
        trainer = _json(cfg_path).get("trainer") or {}
    cls = _dl_class(sd, trainer.get("dict_class"))
    arch = DL_CLASSES[cls]
    where = str(pt)
    notes = [f"dictionary_learning {cls}" + (f" ({trainer['trainer_class']})" if trainer.get("trainer_class") else "")]
    if not cfg_path.is_file():
        notes.append("no config.json beside ae.pt: class inferred from tensor names, model/hook unknown")
    k = None
    apply_b_dec = True
    if cls == "AutoEncoder":
        t = {"W_enc": sd["encoder.weight"].T, "b_enc": sd["encoder.bias"], "W_dec": sd["decoder.weight"].T, "b_dec": sd["bias"]}
    elif cls == "AutoEncoderNew":
        t = {"W_enc": sd["encoder.weight"].T, "b_enc": sd["encoder.bias"], "W_dec": sd["decoder.weight"].T, "b_dec": sd["decoder.bias"]}
        apply_b_dec = False
    elif cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        t = {"W_enc": sd["encoder.weight"].T, "b_enc": sd["encoder.bias"], "W_dec": sd["decoder.weight"].T, "b_dec": sd["b_dec"]}
        k = int(sd["k"]) if "k" in sd else trainer.get("k")
    elif cls == "MatryoshkaBatchTopKSAE":
        t = {n: sd[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        k = int(sd["k"]) if "k" in sd else trainer.get("k")
    elif cls == "JumpReluAutoEncoder":
        t = {n: sd[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        t["threshold"] = _jump_threshold(sd["threshold"].to(torch.float32), notes)
        apply_b_dec = False  # JumpReluAutoEncoder.apply_b_dec_to_input defaults to False and is not saved
    else:  # GatedAutoEncoder
        t = {"W_enc": sd["encoder.weight"].T, "W_dec": sd["decoder.weight"].T, "b_dec": sd["decoder_bias"],
             "b_gate": sd["gate_bias"], "r_mag": sd["r_mag"], "b_mag": sd["mag_bias"]}
    if arch == "batchtopk":
        theta = sd.get("threshold")
        if theta is None or float(theta.reshape(-1)[0]) < 0:
            # never calibrated: the library's default encode (use_threshold=True) keeps ReLU(pre) > -1, i.e. plain ReLU
            t["threshold"] = torch.zeros(())
            notes.append("BatchTopK threshold was never set (< 0): the library encodes as plain ReLU, and so do we")
        else:
            t["threshold"] = theta.to(torch.float32).reshape(-1)[0].reshape(())
    if arch in ("topk", "batchtopk") and not k:
        raise SaebenchError(f"{where}: {cls} needs k (a 'k' buffer in ae.pt or trainer.k in config.json)")
    if trainer.get("norm_factor"):
        notes.append("trained on normalised activations; trainSAE scaled the biases back before saving, so inputs are in model units")
    layer = trainer.get("layer")
    hook = f"blocks.{layer}.hook_resid_post" if isinstance(layer, int) and "resid" in str(trainer.get("submodule_name", "resid")) else None
    if hook:
        notes.append(f"trainer layer {layer} ({trainer.get('submodule_name') or 'residual stream'}) mapped to {hook}")
    sae = _assemble(arch, t, where, k=k, apply_b_dec_to_input=apply_b_dec, hook_name=hook,
                    model_name=trainer.get("lm_name"), source_format="dictionary_learning", source_class=cls)
    name = pt.parent.name if pt.name == "ae.pt" else pt.stem
    return Converted(sae, "dictionary_learning", arch, notes, name=name)


# ---------------------------------------------------------------------------------------------
# dispatch


def load_format(fmt: str, target: str) -> Converted:
    """Load ``target`` as format ``fmt`` (one of :data:`PREFIXES` except native)."""
    if fmt == "sae_lens":
        return load_sae_lens_pretrained(target) if not Path(target).exists() else load_sae_lens_dir(target)
    if fmt == "sparsify":
        return load_sparsify(target)
    if fmt == "openai":
        return load_openai(target)
    if fmt == "dictionary_learning":
        return load_dictionary_learning(target)
    raise SaebenchError(f"unknown SAE format {fmt!r}; use one of {', '.join(PREFIXES)}")


def split_prefix(spec: str) -> tuple[str, str] | None:
    """``sparsify:PATH`` → ("sparsify", "PATH"); None when ``spec`` has no known format prefix."""
    head, sep, rest = spec.partition(":")
    if sep and head in PREFIXES and rest:
        return head, rest
    return None
