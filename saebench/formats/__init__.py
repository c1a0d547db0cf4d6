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
              and an old ``scaling_factor`` tensor are folded into the weights exactly. Transcoders
              ``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder``,
              ``jumprelu_skip_transcoder`` (``d_out``, ``W_skip``, output hook from
              ``metadata.hook_name_out``, inferred as ``blocks.L.hook_mlp_out`` for an MLP-input hook).
``sparsify``  EleutherAI sparsify, one hookpoint folder with ``cfg.json`` + ``sae.safetensors``
              (``encoder.weight [d_sae, d_in]``, ``encoder.bias``, ``W_dec``, ``b_dec``; ``k`` in
              cfg). Our native format uses the same two file names, so detection looks at the
              tensor names. TopK, with transcoders (``transcode``) and skip connections (``W_skip``);
              ``groupmax`` is refused.
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

import dataclasses
from pathlib import Path
from typing import Any

from saebench.errors import SaebenchError
from saebench.formats.common import LABELS, Converted, apply_input_norm, detect_format, fold_input_affine
from saebench.formats.dictionary_learning import load_dictionary_learning
from saebench.formats.openai import load_openai
from saebench.formats.sae_lens import from_sae_lens_parts, load_sae_lens_dir, load_sae_lens_pretrained
from saebench.formats.sparsify import from_sparsify_parts, load_sparsify

FORMATS = ("native", "sae_lens", "sparsify", "openai", "dictionary_learning")
PREFIXES = ("sae_lens", "sparsify", "openai", "dictionary_learning", "native")
__all__ = [
    "FORMATS",
    "LABELS",
    "PREFIXES",
    "Converted",
    "apply_input_norm",
    "detect_format",
    "fold_input_affine",
    "from_library_object",
    "from_sae_lens_parts",
    "load_dictionary_learning",
    "load_format",
    "load_openai",
    "load_sae_lens_dir",
    "load_sae_lens_pretrained",
    "load_sparsify",
    "split_prefix",
]


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


def from_library_object(obj: Any) -> Converted | None:
    """A live SAELens SAE (``sae_lens.SAE`` and subclasses, read through ``obj.cfg.to_dict()`` and
    its state dict) or sparsify ``Sae`` object as the native module; None for any other object.

    This is what most users hold (``SAE.from_pretrained(...)``, a freshly trained SAE): its own
    config names the architecture, widths, hook and model, which a plain protocol wrapper could
    not see (SAELens keeps ``d_in``/``d_sae`` under ``cfg``; sparsify's ``encode`` returns the
    top-k indices, not dense latents)."""
    root = type(obj).__module__.split(".")[0]
    where = f"{root} {type(obj).__name__} object"
    if root == "sae_lens" and callable(getattr(getattr(obj, "cfg", None), "to_dict", None)):
        tensors = {k: v.detach().cpu() for k, v in obj.state_dict().items()}
        conv = from_sae_lens_parts(obj.cfg.to_dict(), tensors, where)
        conv.notes.insert(0, f"converted from a live {where}")
        return conv
    if root == "sparsify" and dataclasses.is_dataclass(getattr(obj, "cfg", None)):
        tensors = {k: v.detach().cpu() for k, v in obj.state_dict().items()}
        conv = from_sparsify_parts(dataclasses.asdict(obj.cfg), tensors, where)
        conv.notes.insert(0, f"converted from a live {where}")
        return conv
    return None
