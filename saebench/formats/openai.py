"""openai/sparse_autoencoder state dicts (``pre_bias``, ``latent_bias``, ``encoder.weight``,
``decoder.weight``): ReLU, and TopK with their per-token LayerNorm of the input."""

from __future__ import annotations

from pathlib import Path

from saebench.errors import SaebenchError
from saebench.formats.common import LABELS, Converted, assemble, load_state_dict, state_dict_format


def load_openai(path: str | Path) -> Converted:
    """An openai/sparse_autoencoder ``Autoencoder.state_dict()`` saved with ``torch.save``."""
    p = Path(path)
    if not p.is_file():
        raise SaebenchError(f"{p} is not a file; an OpenAI sparse_autoencoder SAE is one .pt state dict")
    sd = load_state_dict(p)
    fmt = state_dict_format(sd)
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
        notes.append(
            "OpenAI TopK autoencoder: per-token LayerNorm of the input, undone on decode (as their from_state_dict "
            "does)"
        )
    elif act == "ReLU":
        arch, norm, k = "relu", "none", None
    else:
        raise SaebenchError(f"{where}: OpenAI activation {act!r} is not supported (ReLU, TopK are)")
    notes.append("OpenAI files do not record the model or hook: pass --model and --hook")
    tensors = {"W_enc": enc.T, "b_enc": sd["latent_bias"], "W_dec": w_dec, "b_dec": sd["pre_bias"]}
    sae = assemble(arch, tensors, where, k=k, normalize_activations=norm, source_format="openai")
    return Converted(sae, "openai", arch, notes, name=p.stem)
