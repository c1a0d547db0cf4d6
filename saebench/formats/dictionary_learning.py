"""saprmarks/dictionary_learning ``trainSAE`` output (``ae.pt`` + ``config.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saebench.errors import SaebenchError
from saebench.formats.common import (
    LABELS,
    Converted,
    assemble,
    detect_format,
    jump_threshold,
    load_state_dict,
    read_config,
    state_dict_format,
)

DL_CLASSES = {
    "AutoEncoder": "relu",
    "AutoEncoderNew": "relu",
    "AutoEncoderTopK": "topk",
    "BatchTopKSAE": "batchtopk",
    "MatryoshkaBatchTopKSAE": "batchtopk",
    "JumpReluAutoEncoder": "jumprelu",
    "GatedAutoEncoder": "gated",
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
    raise SaebenchError(
        f"unrecognised dictionary_learning state dict (keys {', '.join(sorted(keys)[:8])}); add config.json with "
        "trainer.dict_class"
    )


def load_dictionary_learning(path: str | Path) -> Converted:
    """A ``trainSAE`` output folder (``ae.pt`` + ``config.json``) or the ``ae.pt`` itself."""
    p = Path(path)
    pt = p / "ae.pt" if p.is_dir() else p
    if not pt.is_file():
        found = detect_format(p)
        if found:
            raise SaebenchError(
                f"{p} looks like a {LABELS[found]}, not a dictionary_learning ae.pt; load it with --sae {found}:{p}"
            )
        raise SaebenchError(f"{p} has no ae.pt; a dictionary_learning SAE is ae.pt + config.json from trainSAE")
    sd = load_state_dict(pt)
    fmt = state_dict_format(sd)
    if fmt == "openai":
        raise SaebenchError(
            f"{pt} looks like an OpenAI sparse_autoencoder state dict, not dictionary_learning; load it with --sae "
            f"openai:{pt}"
        )
    if not isinstance(sd, dict) or fmt is None:
        raise SaebenchError(f"{pt} is not a dictionary_learning state dict; check the file")
    trainer: dict[str, Any] = {}
    cfg_path = pt.parent / "config.json"
    if cfg_path.is_file():
        trainer = read_config(cfg_path).get("trainer") or {}
    cls = _dl_class(sd, trainer.get("dict_class"))
    arch = DL_CLASSES[cls]
    where = str(pt)
    notes = [f"dictionary_learning {cls}" + (f" ({trainer['trainer_class']})" if trainer.get("trainer_class") else "")]
    if not cfg_path.is_file():
        notes.append("no config.json beside ae.pt: class inferred from tensor names, model/hook unknown")
    k = None
    apply_b_dec = True
    extra: dict[str, Any] = {}
    if cls == "AutoEncoder":
        t = {
            "W_enc": sd["encoder.weight"].T,
            "b_enc": sd["encoder.bias"],
            "W_dec": sd["decoder.weight"].T,
            "b_dec": sd["bias"],
        }
    elif cls == "AutoEncoderNew":
        t = {
            "W_enc": sd["encoder.weight"].T,
            "b_enc": sd["encoder.bias"],
            "W_dec": sd["decoder.weight"].T,
            "b_dec": sd["decoder.bias"],
        }
        apply_b_dec = False
    elif cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        t = {
            "W_enc": sd["encoder.weight"].T,
            "b_enc": sd["encoder.bias"],
            "W_dec": sd["decoder.weight"].T,
            "b_dec": sd["b_dec"],
        }
        k = int(sd["k"]) if "k" in sd else trainer.get("k")
    elif cls == "MatryoshkaBatchTopKSAE":
        t = {n: sd[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        k = int(sd["k"]) if "k" in sd else trainer.get("k")
        sizes = sd["group_sizes"].reshape(-1).tolist() if "group_sizes" in sd else trainer.get("group_sizes")
        if sizes:  # the library stores group sizes; the prefix widths are their running sums
            widths = [sum(int(g) for g in sizes[: i + 1]) for i in range(len(sizes))]
            extra["matryoshka_widths"] = widths
            notes.append(f"Matryoshka group sizes {[int(g) for g in sizes]} kept as prefix widths {widths}")
    elif cls == "JumpReluAutoEncoder":
        t = {n: sd[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        t["threshold"] = jump_threshold(sd["threshold"].to(torch.float32), notes)
        apply_b_dec = False  # JumpReluAutoEncoder.apply_b_dec_to_input defaults to False and is not saved
    else:  # GatedAutoEncoder
        t = {
            "W_enc": sd["encoder.weight"].T,
            "W_dec": sd["decoder.weight"].T,
            "b_dec": sd["decoder_bias"],
            "b_gate": sd["gate_bias"],
            "r_mag": sd["r_mag"],
            "b_mag": sd["mag_bias"],
        }
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
        notes.append(
            "trained on normalised activations; trainSAE scaled the biases back before saving, so inputs are in "
            "model units"
        )
    layer = trainer.get("layer")
    hook = (
        f"blocks.{layer}.hook_resid_post"
        if isinstance(layer, int) and "resid" in str(trainer.get("submodule_name", "resid"))
        else None
    )
    if hook:
        notes.append(f"trainer layer {layer} ({trainer.get('submodule_name') or 'residual stream'}) mapped to {hook}")
    sae = assemble(
        arch,
        t,
        where,
        k=k,
        apply_b_dec_to_input=apply_b_dec,
        hook_name=hook,
        model_name=trainer.get("lm_name"),
        source_format="dictionary_learning",
        source_class=cls,
        **extra,
    )
    name = pt.parent.name if pt.name == "ae.pt" else pt.stem
    return Converted(sae, "dictionary_learning", arch, notes, name=name)
